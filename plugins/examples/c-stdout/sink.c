/*
 * c-stdout: a Sluice sink plugin in plain C. It writes every record to
 * standard output, one per line, and reports each as delivered.
 *
 *     cc -std=c99 -pedantic -shared -fPIC -O2 -I ../../../sdk/include -o libsluice_sink_c_stdout.so sink.c -lpthread
 *
 * Configuration: {"prefix": "..."} (optional; written before each line).
 * verify writes the standard test event as one more line.
 * Everything the engine passes is lent for the duration of the call; the
 * vtable and its strings are static; the instance is freed in destroy.
 */
/* Before any #include: POSIX declarations under a strict -std=c99 (here,
 * clock_gettime for sluice_now_ms's milliseconds). */
#define _POSIX_C_SOURCE 200809L
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

/* A tiny strict reader for {} or {"prefix": "..."}: enough for an example.
 * Anything else (another key, escapes, a non-string) is refused with a
 * message in `msg`, as the contract asks: unknown keys are refused, FATAL. */
static size_t skip_ws(SluiceStr c, size_t i) {
    while (i < c.len && (c.ptr[i] == ' ' || c.ptr[i] == '\t' || c.ptr[i] == '\n' || c.ptr[i] == '\r')) i++;
    return i;
}

/* Reads a JSON string without escapes at c.ptr[i] == '"'; returns the index
 * after its closing quote, or 0 when it is not one. */
static size_t read_string(SluiceStr c, size_t i, size_t *start, size_t *len) {
    if (i >= c.len || c.ptr[i] != '"') return 0;
    size_t k = i + 1;
    while (k < c.len && c.ptr[k] != '"' && c.ptr[k] != '\\') k++;
    if (k >= c.len || c.ptr[k] != '"') return 0;
    *start = i + 1;
    *len = k - i - 1;
    return k + 1;
}

static int parse_config(SluiceStr c, char *prefix, size_t cap, char *msg, size_t msg_cap) {
    prefix[0] = 0;
    size_t i = skip_ws(c, 0);
    if (i >= c.len || c.ptr[i] != '{') {
        snprintf(msg, msg_cap, "c_stdout: the configuration must be a JSON object");
        return -1;
    }
    i = skip_ws(c, i + 1);
    if (i < c.len && c.ptr[i] == '}') return skip_ws(c, i + 1) == c.len ? 0 : -1;
    for (;;) {
        size_t ks, kl, vs, vl;
        size_t after = read_string(c, i, &ks, &kl);
        if (!after) break;
        i = skip_ws(c, after);
        if (i >= c.len || c.ptr[i] != ':') break;
        if (kl != 6 || memcmp(c.ptr + ks, "prefix", 6) != 0) {
            snprintf(msg, msg_cap, "c_stdout: unknown configuration key `%.*s` (the only key is `prefix`)",
                     (int)(kl > 64 ? 64 : kl), (const char *)c.ptr + ks);
            return -1;
        }
        after = read_string(c, skip_ws(c, i + 1), &vs, &vl);
        if (!after || vl >= cap) {
            snprintf(msg, msg_cap, "c_stdout: `prefix` must be a string of at most %u bytes, without escapes",
                     (unsigned)(cap - 1));
            return -1;
        }
        memcpy(prefix, c.ptr + vs, vl);
        prefix[vl] = 0;
        i = skip_ws(c, after);
        if (i < c.len && c.ptr[i] == ',') {
            i = skip_ws(c, i + 1);
            continue;
        }
        if (i < c.len && c.ptr[i] == '}' && skip_ws(c, i + 1) == c.len) return 0;
        break;
    }
    snprintf(msg, msg_cap, "c_stdout: the configuration is not valid JSON of the form {\"prefix\": \"...\"}");
    return -1;
}

static int32_t create(const SluiceHost *host, SluiceStr config, const SluiceCall *call, void **out) {
    char msg[160];
    CStdout *s = calloc(1, sizeof *s);
    if (!s) {
        error(call, "c_stdout: out of memory");
        return SLUICE_STATUS_RETRY;
    }
    /* This sink connects nowhere, so it keeps every rule it knows by
     * construction; a rule it does not know it cannot promise to keep. */
    static const char *const known[] = {"egress", "max_timeout_ms", NULL};
    SluiceStr rule;
    if (sluice_restriction_unknown(host, known, &rule)) {
        free(s);
        snprintf(msg, sizeof msg, "c_stdout: unknown operator restriction `%.*s`; update the plugin",
                 (int)(rule.len > 64 ? 64 : rule.len), (const char *)rule.ptr);
        error(call, msg);
        return SLUICE_STATUS_FATAL;
    }
    if (parse_config(config, s->prefix, sizeof s->prefix, msg, sizeof msg) != 0) {
        free(s);
        error(call, msg);
        return SLUICE_STATUS_FATAL; /* a wrong configuration never works: FATAL, not RETRY */
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

/* The test event every Sluice sink writes, as one more line. */
static int32_t verify(void *sink, const SluiceCall *call) {
    CStdout *s = sink;
    char event[512];
    size_t n = sluice_test_event(event, sizeof event, s->host->destination_id, sluice_now_ms());
    if (n >= sizeof event) {
        error(call, "c_stdout: destination id too long for the test event");
        return SLUICE_STATUS_FATAL;
    }
    pthread_mutex_lock(&s->mu);
    int failed = fputs(s->prefix, stdout) < 0 || fwrite(event, 1, n, stdout) != n || fputc('\n', stdout) == EOF || fflush(stdout) != 0;
    pthread_mutex_unlock(&s->mu);
    if (failed) {
        error(call, "c_stdout: cannot write to standard output");
        return SLUICE_STATUS_RETRY;
    }
    return SLUICE_STATUS_OK;
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
    verify,
    destroy,
};

const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VTABLE; }
