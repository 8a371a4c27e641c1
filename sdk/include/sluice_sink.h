/*
 * sluice_sink.h: the Sluice sink plugin ABI, version 1.
 *
 * A sink plugin is a shared library that exports one function,
 *
 *     const SluiceSinkVTable *sluice_sink_entry_v1(void);
 *
 * returning a pointer to a table it owns for as long as it is loaded.
 * This header mirrors sdk/src/abi.rs field for field; a test in the SDK
 * fails if they drift. See sdk/README.md for the contract.
 *
 * C99 or later, or C++. With a strict -std=c99/-std=c11, POSIX functions
 * (clock_gettime, gmtime_r, strdup, pthread_rwlock_*, getaddrinfo, ...) are
 * declared only if you ask for them before the first #include of the file:
 *
 *     #define _POSIX_C_SOURCE 200809L
 *
 * sluice_now_ms() below uses clock_gettime when it is declared, else C11
 * timespec_get, else time() (whole seconds).
 */
#ifndef SLUICE_SINK_H
#define SLUICE_SINK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_ABI_MAJOR 1u
#define SLUICE_ABI_MINOR 2u
#define SLUICE_ENTRY_SYMBOL "sluice_sink_entry_v1"

/* SluiceSinkVTable.flags */
#define SLUICE_FLAG_THREAD_SAFE 1u
/* One batch per subscription at a time; retries keep their place (ABI 1.1). */
#define SLUICE_FLAG_ORDERED 2u

/* Status returned by create, send, flush and verify. */
#define SLUICE_STATUS_OK 0
#define SLUICE_STATUS_RETRY 1
#define SLUICE_STATUS_FATAL 2

/* SluiceOutcome.code */
#define SLUICE_OUTCOME_OK 0u
#define SLUICE_OUTCOME_RETRY 1u
#define SLUICE_OUTCOME_REJECT 2u
#define SLUICE_OUTCOME_UNSET 0xFFFFFFFFu

/* Log levels of SluiceHost.log */
#define SLUICE_LOG_ERROR 1u
#define SLUICE_LOG_WARN 2u
#define SLUICE_LOG_INFO 3u
#define SLUICE_LOG_DEBUG 4u

/* A borrowed byte string, not NUL-terminated. ptr may be NULL when len is 0. */
typedef struct SluiceStr {
    const uint8_t *ptr;
    size_t len;
} SluiceStr;

/* What the engine puts in one send. A record costs len + record_overhead_bytes
 * bytes, and that cost is what max_record_bytes and max_batch_bytes count.
 * - A record costing more than max_record_bytes is dead-lettered by the
 *   engine, never sent.
 * - A batch has at most max_records records and, unless it is a single
 *   record, costs at most max_batch_bytes.
 * - Coherent limits (`sluice plugin check`): if both are nonzero,
 *   max_record_bytes <= max_batch_bytes. Keep record_overhead_bytes below
 *   max_record_bytes too, or every record is dead-lettered. The loader
 *   itself checks none of this.
 * Users may lower max_records and max_batch_bytes per destination. */
typedef struct SluiceLimits {
    uint32_t max_records;           /* 0 = no limit */
    uint32_t record_overhead_bytes; /* what the vendor counts per record on top of its data */
    uint64_t max_batch_bytes;       /* sum of the records' costs; 0 = no limit */
    uint64_t max_record_bytes;      /* one record's cost; 0 = no limit */
} SluiceLimits;

/* One record, lent by the engine for the duration of send only. */
typedef struct SluiceRecord {
    const uint8_t *data; /* compact JSON, no trailing newline */
    size_t len;
    SluiceStr account_id;
    SluiceStr event_id;
    SluiceStr event_type;
    SluiceStr subscription_id;
    int64_t timestamp_ms; /* event_timestamp, ms since the Unix epoch */
} SluiceRecord;

/* Read records with a stride of record_size bytes, not sizeof(SluiceRecord). */
typedef struct SluiceBatch {
    uint32_t struct_size;
    uint32_t record_size;
    const SluiceRecord *records;
    size_t len;
} SluiceBatch;

typedef struct SluiceOutcome {
    uint32_t code;           /* SLUICE_OUTCOME_* */
    uint32_t retry_after_ms; /* for RETRY: not before this many ms (0 = engine's backoff) */
} SluiceOutcome;

/* Per-call context, valid during one create/send/flush/verify call. The
 * callbacks copy what they are given. */
typedef struct SluiceCall {
    uint32_t struct_size;
    uint32_t reserved;
    void *ctx;
    void (*set_error)(void *ctx, SluiceStr message);
    void (*set_reason)(void *ctx, size_t index, SluiceStr reason);
} SluiceCall;

/* Host services, valid from create until destroy returns. Thread-safe. */
typedef struct SluiceHost {
    uint32_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t reserved;
    void *ctx;
    void (*log)(void *ctx, uint32_t level, SluiceStr message);
    void (*counter_add)(void *ctx, SluiceStr name, uint64_t value);
    void (*gauge_set)(void *ctx, SluiceStr name, double value);
    SluiceStr destination_id;
    /* ABI 1.2: the operator's rules for an instance that delivers for a
     * tenant, "key=value" pairs separated by ';' (empty: trusted). Known keys:
     *   egress=public      connect only to public addresses (check the address
     *                      connected to, after DNS and on every redirect)
     *   max_timeout_ms=N   no outbound call waits longer than N ms
     * Refuse to be created (SLUICE_STATUS_FATAL) on a key you do not know.
     * Read it only if struct_size covers it. */
    SluiceStr restrictions;
} SluiceHost;

typedef struct SluiceSinkVTable {
    uint32_t abi_major;   /* must be SLUICE_ABI_MAJOR */
    uint32_t abi_minor;
    uint32_t struct_size; /* sizeof(SluiceSinkVTable) as compiled */
    uint32_t flags;       /* SLUICE_FLAG_* */
    SluiceStr kind;       /* e.g. "kinesis": lowercase letters, digits, '_' */
    SluiceStr version;
    SluiceStr description;
    SluiceStr config_schema; /* JSON Schema of the configuration */
    SluiceLimits limits;
    /* Required. Writes the instance to *out; on failure calls call->set_error. */
    int32_t (*create)(const SluiceHost *host, SluiceStr config, const SluiceCall *call, void **out);
    /* Required. Writes batch->len outcomes (pre-filled with SLUICE_OUTCOME_UNSET). */
    int32_t (*send)(void *sink, const SluiceBatch *batch, SluiceOutcome *outcomes, const SluiceCall *call);
    /* Optional (may be NULL). */
    int32_t (*flush)(void *sink, const SluiceCall *call);
    /* Optional (may be NULL): write one test event. */
    int32_t (*verify)(void *sink, const SluiceCall *call);
    /* Required. Called once, after every other call on the instance returned. */
    void (*destroy)(void *sink);
} SluiceSinkVTable;

typedef const SluiceSinkVTable *(*SluiceEntryFn)(void);

/* Whether a versioned struct of `size` bytes (host->struct_size,
 * call->struct_size, batch->struct_size, or batch->record_size for a record)
 * has `field` of the `type` this header knows: read a field added by a later
 * minor version only if this is true; an older engine's tables are shorter.
 *     if (SLUICE_HAS_FIELD(host->struct_size, SluiceHost, gauge_set) && host->gauge_set) ... */
#define SLUICE_HAS_FIELD(size, type, field) \
    ((size_t)(size) >= offsetof(type, field) + sizeof(((type *)0)->field))

/* The first of the host's restrictions (ABI 1.2) whose key is not one of
 * `known` (a NULL-terminated list, e.g. {"egress", "max_timeout_ms", NULL}:
 * the keys your plugin enforces), as a "key=value" slice in *unknown; returns
 * 1 if there is one (refuse to be created, SLUICE_STATUS_FATAL, naming it),
 * 0 if every rule is known or the engine passes none. */
static inline int sluice_restriction_unknown(const SluiceHost *host, const char *const *known, SluiceStr *unknown) {
    if (!host || !SLUICE_HAS_FIELD(host->struct_size, SluiceHost, restrictions)) return 0;
    const uint8_t *p = host->restrictions.ptr;
    size_t n = host->restrictions.len, i = 0;
    while (p && i < n) {
        while (i < n && (p[i] == ';' || p[i] == ' ')) i++;
        size_t start = i, key_end = i;
        while (i < n && p[i] != ';') i++;
        while (key_end < i && p[key_end] != '=' && p[key_end] != ' ') key_end++;
        if (start == i) break;
        int found = 0;
        for (const char *const *k = known; *k; k++) {
            size_t kl = 0;
            while ((*k)[kl]) kl++;
            if (kl == key_end - start && memcmp(*k, p + start, kl) == 0) found = 1;
        }
        if (!found) {
            unknown->ptr = p + start;
            unknown->len = i - start;
            return 1;
        }
    }
    return 0;
}

/* Milliseconds since the Unix epoch, now (0 before 1970), as Rust's
 * sluice_sdk::events::now_ms. */
static inline int64_t sluice_now_ms(void) {
    int64_t ms;
#if defined(CLOCK_REALTIME) /* POSIX: declared with _POSIX_C_SOURCE >= 199309L */
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
        ms = (int64_t)ts.tv_sec * 1000 + (int64_t)(ts.tv_nsec / 1000000);
    else
#elif defined(TIME_UTC) && !defined(__cplusplus) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) == TIME_UTC)
        ms = (int64_t)ts.tv_sec * 1000 + (int64_t)(ts.tv_nsec / 1000000);
    else
#endif
        ms = (int64_t)time(NULL) * 1000;
    return ms < 0 ? 0 : ms;
}

static inline void sluice_put_digits_(char *out, int width, int64_t v) {
    while (width-- > 0) {
        out[width] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* Writes `ms` (since the Unix epoch) to out[0..24] as an RFC 3339 UTC
 * timestamp with milliseconds, "2026-11-01T00:00:00.123Z" (no NUL): the
 * format of event_timestamp. Outside years 0000-9999 it writes the epoch.
 * Same bytes as sluice_sdk::events::rfc3339_ms; needs no gmtime_r. */
static inline void sluice_rfc3339_ms(char out[24], int64_t ms) {
    int64_t days, rem, z, era, doe, yoe, doy, mp, month;
    int i;
    if (ms < -62167219200000LL || ms > 253402300799999LL) ms = 0;
    days = ms / 86400000 - (ms % 86400000 < 0 ? 1 : 0);
    rem = ms - days * 86400000;
    /* Howard Hinnant's civil_from_days. */
    z = days + 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    month = mp < 10 ? mp + 3 : mp - 9;
    for (i = 0; i < 24; i++) out[i] = "0000-00-00T00:00:00.000Z"[i];
    sluice_put_digits_(out, 4, yoe + era * 400 + (month <= 2 ? 1 : 0));
    sluice_put_digits_(out + 5, 2, month);
    sluice_put_digits_(out + 8, 2, doy - (153 * mp + 2) / 5 + 1);
    sluice_put_digits_(out + 11, 2, rem / 3600000);
    sluice_put_digits_(out + 14, 2, rem / 60000 % 60);
    sluice_put_digits_(out + 17, 2, rem / 1000 % 60);
    sluice_put_digits_(out + 20, 3, rem % 1000);
}

/* Bytes sluice_test_event needs at most (with the NUL) for an id of id_len bytes. */
#define SLUICE_TEST_EVENT_CAP(id_len) (144 + 6 * (size_t)(id_len))

static inline void sluice_put_(char *buf, size_t cap, size_t *n, const char *s, size_t len) {
    size_t i;
    for (i = 0; i < len; i++, (*n)++)
        if (*n + 1 < cap) buf[*n] = s[i];
}

/* Writes the test event a sink's verify sends, the same bytes as Rust's
 * sluice_sdk::events::test_event:
 *   {"event_id":"ev_test_<now_ms>","event_type":"test","event_timestamp":"<RFC 3339 of now_ms>","destination_id":"<id, JSON-escaped>","object":{}}
 * Pass host->destination_id and sluice_now_ms(). Like snprintf: writes at
 * most cap bytes, NUL-terminated if cap > 0, and returns the event's length
 * (without the NUL); the event is whole only if that is < cap. */
static inline size_t sluice_test_event(char *buf, size_t cap, SluiceStr destination_id, int64_t now_ms) {
    static const char hex[] = "0123456789abcdef";
    char digits[20], ts[24], esc[6];
    size_t n = 0, k = 0, i;
    uint64_t u = now_ms < 0 ? (uint64_t)0 - (uint64_t)now_ms : (uint64_t)now_ms;
    do {
        digits[sizeof digits - 1 - k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    if (now_ms < 0) digits[sizeof digits - 1 - k++] = '-';
    sluice_rfc3339_ms(ts, now_ms);
    sluice_put_(buf, cap, &n, "{\"event_id\":\"ev_test_", 21);
    sluice_put_(buf, cap, &n, digits + sizeof digits - k, k);
    sluice_put_(buf, cap, &n, "\",\"event_type\":\"test\",\"event_timestamp\":\"", 41);
    sluice_put_(buf, cap, &n, ts, 24);
    sluice_put_(buf, cap, &n, "\",\"destination_id\":\"", 20);
    for (i = 0; i < destination_id.len; i++) {
        uint8_t b = destination_id.ptr[i];
        size_t m = 0;
        if (b == '"' || b == '\\') {
            esc[m++] = '\\';
            esc[m++] = (char)b;
        } else if (b < 0x20) {
            esc[m++] = '\\'; esc[m++] = 'u'; esc[m++] = '0'; esc[m++] = '0';
            esc[m++] = hex[b >> 4];
            esc[m++] = hex[b & 15];
        } else {
            esc[m++] = (char)b;
        }
        sluice_put_(buf, cap, &n, esc, m);
    }
    sluice_put_(buf, cap, &n, "\",\"object\":{}}", 14);
    if (cap > 0) buf[n < cap ? n : cap - 1] = 0;
    return n;
}

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_SINK_H */
