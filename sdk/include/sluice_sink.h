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
 */
#ifndef SLUICE_SINK_H
#define SLUICE_SINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_ABI_MAJOR 1u
#define SLUICE_ABI_MINOR 1u
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

typedef struct SluiceLimits {
    uint32_t max_records;           /* 0 = no limit */
    uint32_t record_overhead_bytes; /* counted per record on top of its data */
    uint64_t max_batch_bytes;       /* 0 = no limit */
    uint64_t max_record_bytes;      /* 0 = no limit */
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

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_SINK_H */
