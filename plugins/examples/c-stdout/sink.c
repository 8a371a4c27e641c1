/*
 * c-stdout: a Sluice sink plugin in plain C. It writes every record to
 * standard output, one per line, and reports each as delivered.
 *
 *     cc -shared -fPIC -O2 -I ../../../sdk/include -o libsluice_sink_c_stdout.so sink.c -lpthread
 *
 * Configuration: {"prefix": "..."} (optional; written before each line).
 * Everything the engine passes is lent for the duration of the call; the
 * vtable and its strings are static; the instance is freed in destroy.
 */
#include <sluice_sink.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char prefix[64];
    pthread_mutex_t mu; /* send may run on several threads: lines must not interleave */
    const SluiceHost *host;
} CStdout;

static void error(const SluiceCall *call, const char *msg) {
    if (call && call->set_error) {
        SluiceStr s = { (const uint8_t *)msg, strlen(msg) };
        call->set_error(call->ctx, s);
    }
}

/* A tiny reader for {"prefix":"..."}: enough for an example. */
static int parse_prefix(SluiceStr config, char *out, size_t cap) {
    out[0] = 0;
    const char *key = "\"prefix\"";
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen <= config.len; i++) {
        if (memcmp(config.ptr + i, key, klen) != 0) continue;
        size_t j = i + klen;
        while (j < config.len && (config.ptr[j] == ' ' || config.ptr[j] == ':')) j++;
        if (j >= config.len || config.ptr[j] != '"') return -1;
        size_t k = ++j;
        while (k < config.len && config.ptr[k] != '"') k++;
        if (k >= config.len || k - j >= cap) return -1;
        memcpy(out, config.ptr + j, k - j);
        out[k - j] = 0;
        return 0;
    }
    return 0;
}

static int32_t create(const SluiceHost *host, SluiceStr config, const SluiceCall *call, void **out) {
    if (config.len == 0 || config.ptr[0] != '{') {
        error(call, "c_stdout: the configuration must be a JSON object");
        return SLUICE_STATUS_FATAL;
    }
    CStdout *s = calloc(1, sizeof *s);
    if (!s) {
        error(call, "c_stdout: out of memory");
        return SLUICE_STATUS_RETRY;
    }
    if (parse_prefix(config, s->prefix, sizeof s->prefix) != 0) {
        free(s);
        error(call, "c_stdout: `prefix` must be a string of at most 63 bytes");
        return SLUICE_STATUS_FATAL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->host = host;
    *out = s;
    return SLUICE_STATUS_OK;
}

static int32_t send(void *sink, const SluiceBatch *batch, SluiceOutcome *outcomes, const SluiceCall *call) {
    CStdout *s = sink;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < batch->len; i++) {
        /* Step by record_size: a newer engine may append fields to SluiceRecord. */
        const SluiceRecord *r = (const SluiceRecord *)((const uint8_t *)batch->records + i * batch->record_size);
        if (fputs(s->prefix, stdout) < 0 || fwrite(r->data, 1, r->len, stdout) != r->len || fputc('\n', stdout) == EOF) {
            pthread_mutex_unlock(&s->mu);
            error(call, "c_stdout: cannot write to standard output");
            return SLUICE_STATUS_RETRY; /* every record of the batch is retried */
        }
        outcomes[i].code = SLUICE_OUTCOME_OK;
    }
    fflush(stdout);
    pthread_mutex_unlock(&s->mu);
    if (s->host->counter_add) {
        SluiceStr name = { (const uint8_t *)"lines", 5 };
        s->host->counter_add(s->host->ctx, name, batch->len);
    }
    return SLUICE_STATUS_OK;
}

static int32_t flush_(void *sink, const SluiceCall *call) {
    (void)sink; (void)call;
    return fflush(stdout) == 0 ? SLUICE_STATUS_OK : SLUICE_STATUS_RETRY;
}

static void destroy(void *sink) {
    CStdout *s = sink;
    pthread_mutex_destroy(&s->mu);
    free(s);
}

#define S(x) { (const uint8_t *)(x), sizeof(x) - 1 }

static const SluiceSinkVTable VTABLE = {
    SLUICE_ABI_MAJOR,
    SLUICE_ABI_MINOR,
    sizeof(SluiceSinkVTable),
    SLUICE_FLAG_THREAD_SAFE,
    S("c_stdout"),
    S("0.1.0"),
    S("writes every record to standard output (an example plugin in C)"),
    S("{\"type\":\"object\",\"properties\":{\"prefix\":{\"type\":\"string\",\"maxLength\":63}},\"additionalProperties\":false}"),
    { 1000, 1, 0, 1 << 20 },
    create,
    send,
    flush_,
    NULL, /* no verify */
    destroy,
};

const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VTABLE; }
