/* A sink for the ordering test: declares SLUICE_FLAG_ORDERED (unless built
 * with -DUNORDERED), fails every third send call as a whole (every record to
 * retry), takes a few milliseconds on others, and appends the event id of
 * every record it accepts to the file named by the configuration
 * ({"path":"..."}), one per line, in the order it accepted them. */
#include <sluice_sink.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { FILE *f; pthread_mutex_t mu; unsigned long calls; } Sink;

static int32_t create(const SluiceHost *host, SluiceStr config, const SluiceCall *call, void **out) {
    (void)host;
    char cfg[4096];
    size_t n = config.len < sizeof cfg - 1 ? config.len : sizeof cfg - 1;
    memcpy(cfg, config.ptr, n);
    cfg[n] = 0;
    char *p = strstr(cfg, "\"path\":\"");
    if (!p) {
        SluiceStr m = { (const uint8_t *)"path missing", 12 };
        call->set_error(call->ctx, m);
        return SLUICE_STATUS_FATAL;
    }
    p += 8;
    char *end = strchr(p, '"');
    if (end) *end = 0;
    Sink *s = calloc(1, sizeof *s);
    if (!s) return SLUICE_STATUS_FATAL;
    s->f = fopen(p, "a");
    if (!s->f) { free(s); return SLUICE_STATUS_FATAL; }
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return SLUICE_STATUS_OK;
}

static int32_t send(void *sink, const SluiceBatch *batch, SluiceOutcome *outcomes, const SluiceCall *call) {
    (void)call;
    Sink *s = sink;
    pthread_mutex_lock(&s->mu);
    unsigned long c = ++s->calls;
    pthread_mutex_unlock(&s->mu);
    if (c % 3 == 0) {
        for (size_t i = 0; i < batch->len; i++) { outcomes[i].code = SLUICE_OUTCOME_RETRY; outcomes[i].retry_after_ms = 0; }
        return SLUICE_STATUS_OK;
    }
    struct timespec ts = { 0, (long)((c % 4) * 2000000L) };
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < batch->len; i++) {
        const SluiceRecord *r = (const SluiceRecord *)((const uint8_t *)batch->records + i * batch->record_size);
        fprintf(s->f, "%.*s\n", (int)r->event_id.len, (const char *)r->event_id.ptr);
        outcomes[i].code = SLUICE_OUTCOME_OK;
    }
    fflush(s->f);
    pthread_mutex_unlock(&s->mu);
    return SLUICE_STATUS_OK;
}

static void destroy(void *sink) {
    Sink *s = sink;
    fclose(s->f);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

#ifdef UNORDERED
#define FLAGS SLUICE_FLAG_THREAD_SAFE
#define KIND "unordered"
#else
#define FLAGS (SLUICE_FLAG_THREAD_SAFE | SLUICE_FLAG_ORDERED)
#define KIND "ordered"
#endif

static const SluiceSinkVTable VT = {
    SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, sizeof(SluiceSinkVTable), FLAGS,
    { (const uint8_t *)KIND, sizeof KIND - 1 }, { (const uint8_t *)"0.0.1", 5 }, { (const uint8_t *)"records arrival order", 21 },
    { (const uint8_t *)"{}", 2 }, { 50, 0, 0, 0 }, create, send, NULL, NULL, destroy,
};

const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VT; }
