/* A plugin built against a future minor version of the ABI (the test
 * generates that header from today's by appending fields, as minor versions
 * do): its vtable is bigger and declares minor 9, and it reads records with
 * the engine's record_size, touching `future_field` only when the engine's
 * records are big enough to have it. */
#include <sluice_sink.h>
#include <stdlib.h>

#if SLUICE_ABI_MINOR < 9
#error "compile against the generated future header"
#endif

static int32_t create(const SluiceHost *host, SluiceStr config, const SluiceCall *call, void **out) {
    (void)config; (void)call;
    *out = (void *)host;
    return SLUICE_STATUS_OK;
}

static int32_t send(void *sink, const SluiceBatch *batch, SluiceOutcome *outcomes, const SluiceCall *call) {
    (void)call;
    const SluiceHost *host = sink;
    uint64_t future = 0;
    for (size_t i = 0; i < batch->len; i++) {
        const SluiceRecord *r = (const SluiceRecord *)((const uint8_t *)batch->records + i * batch->record_size);
        if (batch->record_size >= offsetof(SluiceRecord, future_field) + sizeof(uint64_t)) future += r->future_field;
        outcomes[i].code = r->len > 0 ? SLUICE_OUTCOME_OK : SLUICE_OUTCOME_REJECT;
    }
    /* The host table of this engine is older: only read what it has. */
    if (host->struct_size >= offsetof(SluiceHost, counter_add) + sizeof(void *) && host->counter_add) {
        SluiceStr n = { (const uint8_t *)"future_fields_seen", 18 };
        host->counter_add(host->ctx, n, future);
        SluiceStr m = { (const uint8_t *)"records", 7 };
        host->counter_add(host->ctx, m, batch->len);
    }
    return SLUICE_STATUS_OK;
}

static void destroy(void *sink) { (void)sink; }

static int32_t describe(void *sink) { (void)sink; return 0; }

static const SluiceSinkVTable VT = {
    SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, sizeof(SluiceSinkVTable), SLUICE_FLAG_THREAD_SAFE,
    { (const uint8_t *)"future", 6 }, { (const uint8_t *)"9.0.0", 5 }, { (const uint8_t *)"built for ABI 1.9", 17 },
    { (const uint8_t *)"{}", 2 }, { 100, 0, 0, 0 }, create, send, NULL, NULL, destroy, describe,
};

const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VT; }
