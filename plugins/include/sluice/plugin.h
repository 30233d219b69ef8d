/* SPDX-License-Identifier: MIT
 *
 * The sluice plugin ABI, version 1.1. A plugin is a shared library that exports one function,
 * sluice_plugin_entry(), returning a const descriptor: its name and version, the subscriptions it
 * wants, the topics it may publish to, and its callbacks. The host (a sluiced worker process) loads it
 * with dlopen(RTLD_NOW | RTLD_LOCAL), checks the descriptor, calls init() once, handle() once per
 * message, sync() (optional) before the outcomes of a run of messages are committed, and shutdown()
 * once before unloading.
 *
 * Versioning: every struct that crosses the boundary starts with its size (or sits behind one that
 * does) and only grows at its end. The host accepts a plugin with the same ABI major and a minor not
 * above its own; it reads fields past the plugin's struct_size as zero.
 *
 * Threads: init, handle, sync and shutdown are called on one thread, one call at a time, per instance (a
 * plugin with `instances = N` runs in N processes). A sluice_context is valid only during the handle()
 * call it was given to; every sluice_bytes/sluice_str the host hands out is borrowed for that call (or
 * until the next call on the same context, for kv_get), and whoever allocates frees. Functions return
 * 0 or a negative errno-style code. No C++ exception may cross this boundary.
 *
 * Exactly-once effects: a handler does not write anywhere itself. kv_put/kv_delete, publish and reply
 * are recorded in a bundle that the host commits together with the ack of the input message, in one
 * broker transaction, after handle() returns SLUICE_OK. A RETRY or REJECT outcome discards the bundle.
 * If a bundle raced another instance (a key it read changed), the host runs handle() again with fresh
 * reads. Outside effects (an email) are at-least-once: use the message id to recognise a repeat.
 * A plugin whose outside effect must be made durable (a file fsynced) can do that once for many
 * messages in sync(), which the host calls before it commits the bundles of the messages handled
 * since the previous sync().
 * See sluice-plugin(7).
 */
#ifndef SLUICE_PLUGIN_H
#define SLUICE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_PLUGIN_ABI_MAJOR 1u
#define SLUICE_PLUGIN_ABI_MINOR 2u
#define SLUICE_PLUGIN_ENTRY_SYMBOL "sluice_plugin_entry"

#if defined(__GNUC__)
#define SLUICE_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define SLUICE_PLUGIN_EXPORT
#endif

typedef struct sluice_bytes {
  const void* data;
  size_t size;
} sluice_bytes;

typedef struct sluice_str {
  const char* data; /* not NUL-terminated */
  size_t size;
} sluice_str;

typedef enum sluice_ordering {
  SLUICE_ORDERING_NONE = 0,
  SLUICE_ORDERING_KEY = 1, /* same key: in order, never in flight twice */
} sluice_ordering;

typedef enum sluice_start {
  SLUICE_START_LATEST = 0, /* only messages published after the subscription is created */
  SLUICE_START_EARLIEST = 1, /* everything the topic still holds: backfill */
} sluice_start;

/* One durable subscription the plugin consumes. The broker subscription is named `name` on `topic`;
 * all instances of the plugin share it (competing consumers). */
typedef struct sluice_subscription {
  const char* topic;
  const char* name;
  sluice_start start;
  sluice_ordering ordering;
  uint32_t max_deliveries; /* 0: broker default */
  uint32_t ack_wait_ms;    /* 0: broker default */
  uint32_t prefetch;       /* 0: 64 */
} sluice_subscription;

typedef struct sluice_header {
  sluice_str name;
  sluice_str value;
} sluice_header;

/* The message being handled. All fields are borrowed for the handle() call. */
typedef struct sluice_message {
  uint8_t id[16]; /* UUID, big-endian bytes */
  sluice_str topic;
  sluice_str key;
  sluice_str type;
  sluice_str correlation_id;
  sluice_str causation_id;
  int64_t publish_time_us;
  uint64_t seq;            /* its topic's sequence number; 0 for a request handed over unstored */
  uint32_t delivery_count; /* 1 on the first delivery */
  int is_request;          /* a Request: answer with reply() */
  const sluice_header* headers;
  size_t n_headers;
  sluice_bytes payload;
  const char* subscription; /* which of the plugin's subscriptions delivered it (NUL-terminated) */
} sluice_message;

/* A message to publish (or a reply). Empty correlation_id: the input's correlation id is used. The
 * causation id is always the input's id, and the message id is derived from the input's id, the
 * plugin's name and the message's position among the handler's publishes, so a re-run publishes the
 * same ids (deduplicated by the broker). */
typedef struct sluice_out_message {
  const char* topic; /* must be one of the descriptor's `publishes`; ignored by reply() */
  sluice_str key;
  sluice_str type;
  sluice_str correlation_id;
  const sluice_header* headers;
  size_t n_headers;
  sluice_bytes payload;
} sluice_out_message;

typedef enum sluice_outcome {
  SLUICE_OK = 0,     /* commit the bundle and ack the message */
  SLUICE_RETRY = 1,  /* discard the bundle; redeliver after retry_after_ms (0: the backoff) */
  SLUICE_REJECT = 2, /* discard the bundle; dead-letter the message with `reason` */
} sluice_outcome;

typedef struct sluice_result {
  sluice_outcome outcome;
  uint32_t retry_after_ms;
  const char* reason; /* copied by the host before handle() returns to it; may be NULL */
} sluice_result;

enum sluice_log_level {
  SLUICE_LOG_ERROR = 3,
  SLUICE_LOG_WARNING = 4,
  SLUICE_LOG_NOTICE = 5,
  SLUICE_LOG_INFO = 6,
  SLUICE_LOG_DEBUG = 7,
};

typedef struct sluice_context sluice_context; /* opaque; valid during one handle() call */

/* kv_scan callback: return 0 to go on, non-zero to stop. */
typedef int (*sluice_scan_fn)(void* user, sluice_bytes key, sluice_bytes value);

/* Host services. Keys and values are arbitrary bytes (keys up to 400 bytes, values up to 1 MiB) in the
 * plugin's own keyspace; reads see committed state plus this handler's own writes. */
typedef struct sluice_host_api {
  uint32_t struct_size;
  /* 0 and *value set (borrowed until the next call on ctx), -ENOENT when absent. */
  int (*kv_get)(sluice_context* ctx, sluice_bytes key, sluice_bytes* value);
  int (*kv_put)(sluice_context* ctx, sluice_bytes key, sluice_bytes value);
  int (*kv_delete)(sluice_context* ctx, sluice_bytes key);
  /* Keys starting with `prefix` in key order; at most `limit` (0: no limit). */
  int (*kv_scan)(sluice_context* ctx, sluice_bytes prefix, size_t limit, sluice_scan_fn fn, void* user);
  /* -EPERM for a topic the plugin did not declare. */
  int (*publish)(sluice_context* ctx, const sluice_out_message* message);
  /* -EINVAL when the message is not a request; at most one reply per request. */
  int (*reply)(sluice_context* ctx, const sluice_out_message* message);
  /* Microseconds since the Unix epoch (the host's clock; tests inject one). */
  int64_t (*now_us)(sluice_context* ctx);
  /* Logs through the daemon, prefixed with the plugin's name. ctx may be NULL outside handle(). */
  void (*log)(sluice_context* ctx, int level, const char* message);
} sluice_host_api;

typedef struct sluice_plugin_init {
  uint32_t struct_size;
  const sluice_host_api* api; /* valid until shutdown() returns */
  const char* config_json;    /* the plugin's `config` table as a JSON object ("{}" when none) */
  const char* data_dir;       /* a private directory for files (a Maildir), created by the host */
  uint32_t instance;          /* 0 .. instances-1 */
  /* Since ABI 1.1 (read it only when struct_size covers it): the host kills a handle() or sync()
   * call that runs longer than this (the plugin's handler_timeout), so a plugin can refuse a
   * config whose own timeouts exceed it. */
  uint32_t handler_timeout_ms;
  /* Since ABI 1.2 (call it only when struct_size covers it), and only during init(): subscription
   * `index` of sluice_plugin.subscriptions delivers only messages whose envelope type is one of the
   * `n_types` NUL-terminated strings in `types` (1 to 32 types, each 1 to 256 bytes); the broker
   * acknowledges every other message as it reads it, without a delivery (FILTERED in `sluicectl
   * subs`), so a plugin does not wake up for events it ignores. A subscription never named here gets
   * every type. A later call for the same index replaces the earlier one. The instances share the
   * subscription: the types of the one that subscribed last apply to all. Returns 0, or -EINVAL
   * (logged with the reason). */
  int (*set_subscription_types)(const struct sluice_plugin_init* init, size_t index, const char* const* types,
                                size_t n_types);
} sluice_plugin_init;

typedef struct sluice_plugin {
  uint32_t abi_major; /* SLUICE_PLUGIN_ABI_MAJOR */
  uint32_t abi_minor; /* SLUICE_PLUGIN_ABI_MINOR */
  uint32_t struct_size; /* sizeof(sluice_plugin) */
  const char* name;     /* [a-z0-9_-]{1,64}; also the keyspace name */
  const char* version;
  const sluice_subscription* subscriptions;
  size_t n_subscriptions;
  const char* const* publishes; /* topics the plugin may publish to */
  size_t n_publishes;
  /* Optional. Returns 0, or a negative errno: the worker exits and the supervisor backs off. */
  int (*init)(const sluice_plugin_init* init, void** state);
  /* Required. */
  sluice_result (*handle)(void* state, const sluice_message* message, sluice_context* ctx);
  /* Optional. */
  void (*shutdown)(void* state);
  /* Optional, ABI 1.1. Makes the outside effects of every handle() since the previous sync() durable,
   * for all of them at once (one fsync for many files). The host calls it after a run of handle()
   * calls that returned SLUICE_OK (as many as it has queued, up to 256 and 50 ms) and commits none of
   * their bundles before it returns 0. A negative errno: every one of those messages is retried, as if
   * its handle() had returned SLUICE_RETRY. A crash or handler_timeout kill inside sync() counts no
   * crash against those messages. Without sync, each bundle is committed as soon as its handle()
   * returns. */
  int (*sync)(void* state);
} sluice_plugin;

typedef const sluice_plugin* (*sluice_plugin_entry_fn)(void);

/* The one exported symbol of a plugin. */
SLUICE_PLUGIN_EXPORT const sluice_plugin* sluice_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_PLUGIN_H */
