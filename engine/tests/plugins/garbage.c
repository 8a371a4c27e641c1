/* A plugin that breaks the contract: invalid outcome codes, unset outcomes,
 * an unknown status without a message, and set_reason with bad indexes. */
#include <sluice_sink.h>
#include <stdlib.h>

static int32_t create(const SluiceHost *host, SluiceStr config, const SluiceCall *call, void **out) {
    (void)host; (void)config; (void)call;
    *out = malloc(16);
    return *out ? SLUICE_STATUS_OK : SLUICE_STATUS_FATAL;
}

static unsigned long calls = 0;

static int32_t send(void *sink, const SluiceBatch *batch, SluiceOutcome *outcomes, const SluiceCall *call) {
    (void)sink;
    calls++;
    if (calls % 3 == 0) return 42; /* not a status */
    for (size_t i = 0; i < batch->len; i++) {
        if (i % 2 == 0) outcomes[i].code = 77; /* not an outcome */
        /* odd ones left unset */
    }
    SluiceStr r = { (const uint8_t *)"x", 1 };
    call->set_reason(call->ctx, batch->len + 1000, r); /* out of range */
    return SLUICE_STATUS_OK;
}

static void destroy(void *sink) { free(sink); }

static const SluiceSinkVTable VT = {
    SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, sizeof(SluiceSinkVTable), SLUICE_FLAG_THREAD_SAFE,
    { (const uint8_t *)"garbage", 7 }, { (const uint8_t *)"0.0.1", 5 }, { (const uint8_t *)"breaks the contract", 19 },
    { (const uint8_t *)"{}", 2 }, { 50, 0, 0, 0 }, create, send, NULL, NULL, destroy,
};

const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VT; }
