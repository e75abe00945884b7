/*
 * orcwire.h: the C ABI of orcwire (crate orcwire-capi).
 *
 * Link with liborcwire_capi.a (plus -lpthread -ldl -lm) or
 * liborcwire_capi.so. Hand-written; capi/tests/header.rs checks that every
 * function exported by the library is declared here and vice versa, and
 * compiles this header as C11 and C++17 with warnings as errors.
 *
 * Conventions, for every function below:
 *  - Functions returning orcwire_status return ORCWIRE_STATUS_OK (0) on
 *    success; on anything else orcwire_last_error() says what happened and
 *    what to do. A NULL handle or a NULL required pointer is
 *    ORCWIRE_STATUS_NULL_ARGUMENT, never undefined behaviour. No Rust panic
 *    crosses into C: it becomes ORCWIRE_STATUS_PANIC.
 *  - Handles are opaque pointers owned by the caller until passed to their
 *    *_free function (or consumed, where stated); after that the pointer
 *    is dangling. Freeing twice is undefined behaviour, like free().
 *  - Out parameters are written only as stated; on failure they are left
 *    untouched unless stated otherwise.
 *  - Timeouts are in nanoseconds, relative; a negative value means no
 *    limit, 0 means "only what is ready now".
 *  - Threads: every function may be called from any thread. "Any
 *    thread" on a handle's function also means concurrently with other
 *    calls on the same handle; where a function says "one thread at a
 *    time", concurrent calls on the same handle need the caller's own
 *    locking (or are refused, where stated). Buffers and builders are
 *    plain objects: synchronise access to one yourself, as for any C
 *    struct.
 *  - Context pointers (void *ctx) are never dereferenced by orcwire; the
 *    caller promises they may be used from the orcwire threads that run
 *    handlers and callbacks.
 */
#ifndef ORCWIRE_H
#define ORCWIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version of this header; see orcwire_check_abi. */
#define ORCWIRE_ABI_VERSION 1u

/* ------------------------------------------------------------------ */
/* Status codes and errors                                             */
/* ------------------------------------------------------------------ */

/** What a call did. Every value but ORCWIRE_STATUS_OK comes with a
 *  message from orcwire_last_error(). */
typedef enum orcwire_status {
  ORCWIRE_STATUS_OK = 0,
  ORCWIRE_STATUS_NULL_ARGUMENT = 1,    /* a required pointer was NULL */
  ORCWIRE_STATUS_INVALID_ARGUMENT = 2, /* bad opcode/role/size/UTF-8, bytes NULL with len > 0 */
  ORCWIRE_STATUS_CLOSED = 3,           /* the handle was closed on this side */
  ORCWIRE_STATUS_PEER_HUNG_UP = 4,     /* the peer closed the connection */
  ORCWIRE_STATUS_PEER_DIED = 5,        /* the peer process died */
  ORCWIRE_STATUS_TIMED_OUT = 6,
  ORCWIRE_STATUS_INTERRUPTED = 7,      /* orcwire_transport_interrupt_recv */
  ORCWIRE_STATUS_PROTOCOL = 8,         /* the peer broke the protocol */
  ORCWIRE_STATUS_TOO_LARGE = 9,        /* message above the size limit */
  ORCWIRE_STATUS_IO = 10,              /* the OS refused an operation */
  ORCWIRE_STATUS_LAUNCH = 11,          /* spawn/listen/accept/attach failed */
  ORCWIRE_STATUS_CONNECT = 12,         /* endpoint set-up failed */
  ORCWIRE_STATUS_NOT_FOUND = 13,       /* no entry point of that name */
  ORCWIRE_STATUS_IN_USE = 14,          /* the transport belongs to an endpoint */
  ORCWIRE_STATUS_BUSY = 15,            /* too many calls pending */
  ORCWIRE_STATUS_WOULD_DEADLOCK = 16,  /* a wait inside a handler could never end */
  ORCWIRE_STATUS_INVALID_STATE = 17,   /* not allowed now, or for this role */
  ORCWIRE_STATUS_ABI_MISMATCH = 18,    /* header and library disagree */
  ORCWIRE_STATUS_DISCONNECTED = 19,    /* the connection ended before the call did */
  ORCWIRE_STATUS_PANIC = 20            /* a bug in orcwire, caught at the boundary */
} orcwire_status;

/** The message of the last failed orcwire call on the calling thread.
 *  Owned by orcwire; valid until the next orcwire call on this thread
 *  that fails. Empty if none failed. Never NULL. Any thread. */
const char *orcwire_last_error(void);

/** A static NUL-terminated name for a status value ("ORCWIRE_STATUS_OK",
 *  ...). Never NULL; owned by orcwire, never freed. Any thread. */
const char *orcwire_status_name(uint32_t status);

/* ------------------------------------------------------------------ */
/* orc-rt's wrapper-function buffer                                    */
/* ------------------------------------------------------------------ */

#ifndef ORC_RT_WRAPPER_FUNCTION_BUFFER_DEFINED
#define ORC_RT_WRAPPER_FUNCTION_BUFFER_DEFINED
/** orc-rt's orc_rt_WrapperFunctionBuffer, field for field. Up to 8 bytes
 *  live inline in Data.Value; more live in a malloc'd block at
 *  Data.ValuePtr. Size 0 with a NULL pointer is empty; Size 0 with a
 *  non-NULL pointer is an out-of-band error: a malloc'd NUL-terminated
 *  message. Whoever holds a buffer owns its allocation and releases it
 *  with orcwire_buffer_dispose (or free() on the pointer, as orc-rt). */
typedef union {
  char *ValuePtr;
  char Value[sizeof(char *)];
} orc_rt_WrapperFunctionBufferDataUnion;

typedef struct {
  orc_rt_WrapperFunctionBufferDataUnion Data;
  size_t Size;
} orc_rt_WrapperFunctionBuffer;
#endif

/** One received message (orcwire_transport_recv). The caller owns
 *  `payload` and disposes of it with orcwire_buffer_dispose. */
typedef struct orcwire_message {
  uint32_t opcode;   /* an orcwire_opcode */
  uint32_t reserved; /* always 0 */
  uint64_t seq;
  uint64_t tag;
  orc_rt_WrapperFunctionBuffer payload;
} orcwire_message;

#if defined(__cplusplus)
#define ORCWIRE_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define ORCWIRE_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif
#if UINTPTR_MAX == 0xffffffffffffffffu
ORCWIRE_STATIC_ASSERT(sizeof(orc_rt_WrapperFunctionBuffer) == 16, "orc-rt buffer is 16 bytes");
ORCWIRE_STATIC_ASSERT(offsetof(orc_rt_WrapperFunctionBuffer, Data) == 0, "Data at 0");
ORCWIRE_STATIC_ASSERT(offsetof(orc_rt_WrapperFunctionBuffer, Size) == 8, "Size at 8");
ORCWIRE_STATIC_ASSERT(sizeof(orc_rt_WrapperFunctionBufferDataUnion) == 8, "union is 8 bytes");
ORCWIRE_STATIC_ASSERT(sizeof(orcwire_message) == 40, "orcwire_message is 40 bytes");
ORCWIRE_STATIC_ASSERT(offsetof(orcwire_message, seq) == 8, "seq at 8");
ORCWIRE_STATIC_ASSERT(offsetof(orcwire_message, tag) == 16, "tag at 16");
ORCWIRE_STATIC_ASSERT(offsetof(orcwire_message, payload) == 24, "payload at 24");
#endif

/** Checks at run time that the library matches this header: pass
 *  ORCWIRE_ABI_VERSION and the two sizes (ORCWIRE_CHECK_ABI() does).
 *  ORCWIRE_STATUS_ABI_MISMATCH otherwise. Any thread. */
orcwire_status orcwire_check_abi(uint32_t abi_version, size_t buffer_size, size_t message_size);
#define ORCWIRE_CHECK_ABI() \
  orcwire_check_abi(ORCWIRE_ABI_VERSION, sizeof(orc_rt_WrapperFunctionBuffer), sizeof(orcwire_message))

/** Sets *out to an empty buffer (owns nothing). NULL out is ignored. */
void orcwire_buffer_init(orc_rt_WrapperFunctionBuffer *out);
/** *out becomes a buffer holding a copy of `len` bytes at `bytes` (NULL
 *  allowed when len is 0). The caller owns *out. Any thread. */
orcwire_status orcwire_buffer_from_bytes(const void *bytes, size_t len, orc_rt_WrapperFunctionBuffer *out);
/** *out becomes a zero-filled buffer of `len` bytes; fill it through
 *  orcwire_buffer_data. The caller owns *out. */
orcwire_status orcwire_buffer_allocate(size_t len, orc_rt_WrapperFunctionBuffer *out);
/** *out becomes an out-of-band error holding a malloc'd copy of
 *  `message`. The caller owns *out. */
orcwire_status orcwire_buffer_from_error(const char *message, orc_rt_WrapperFunctionBuffer *out);
/** The buffer's bytes (inside *buffer when Size <= 8, else the heap
 *  block), borrowed from the buffer. NULL for NULL or an error buffer. */
char *orcwire_buffer_data(orc_rt_WrapperFunctionBuffer *buffer);
/** buffer->Size, or 0 for NULL. */
size_t orcwire_buffer_size(const orc_rt_WrapperFunctionBuffer *buffer);
/** The out-of-band error message, borrowed from the buffer, or NULL when
 *  it is not an error (or buffer is NULL). */
const char *orcwire_buffer_error(const orc_rt_WrapperFunctionBuffer *buffer);
/** Frees what the buffer owns and resets it to empty, so a second
 *  dispose is harmless. NULL is ignored. */
void orcwire_buffer_dispose(orc_rt_WrapperFunctionBuffer *buffer);

/* ------------------------------------------------------------------ */
/* The message level (LLVM SimpleRemoteEPCTransport)                   */
/* ------------------------------------------------------------------ */

/** LLVM's SimpleRemoteEPCOpcode values. */
typedef enum orcwire_opcode {
  ORCWIRE_OPCODE_SETUP = 0,
  ORCWIRE_OPCODE_HANGUP = 1,
  ORCWIRE_OPCODE_RESULT = 2,
  ORCWIRE_OPCODE_CALL_WRAPPER = 3
} orcwire_opcode;

/** How a blocked send or receive waits (orcwire_shm_config.wait). */
typedef enum orcwire_wait {
  ORCWIRE_WAIT_DEFAULT = 0,
  ORCWIRE_WAIT_LOWEST_LATENCY = 1,
  ORCWIRE_WAIT_BALANCED = 2,
  ORCWIRE_WAIT_LOW_CPU = 3
} orcwire_wait;

/** Shared-memory settings. A NULL config pointer means all defaults; a
 *  0 field means that field's default. */
typedef struct orcwire_shm_config {
  uint32_t wait;             /* an orcwire_wait */
  uint32_t reserved;         /* 0 */
  uint64_t ring_capacity;    /* bytes per ring, power of two >= 256 (controller); 0: 1 MiB */
  uint64_t max_message_size; /* 0: 1 GiB */
} orcwire_shm_config;

/** A connection at the message level. Threads: send from any number of
 *  threads at once; recv from one thread at a time; interrupt_recv,
 *  close and peer_died from any thread at any time; free only after
 *  close (or after the transport was given to an endpoint) and once no
 *  other call on it is running. */
typedef struct orcwire_transport orcwire_transport;
/** A spawned executor process. One thread at a time. */
typedef struct orcwire_process orcwire_process;
/** A controller's listening socket. One thread at a time. */
typedef struct orcwire_shm_listener orcwire_shm_listener;

/** Controller: spawns argv[0] (looked up in PATH like execvp) with
 *  argv[1..] (NULL-terminated) and a fresh shared segment inherited, and
 *  waits up to attach_timeout_ns (negative: 10 s) for it to attach with
 *  orcwire_shm_attach_inherited. On success the caller owns
 *  *out_transport and *out_process (free both). Any thread. */
orcwire_status orcwire_shm_spawn(const char *const *argv, const orcwire_shm_config *config,
                                 int64_t attach_timeout_ns, orcwire_transport **out_transport,
                                 orcwire_process **out_process);
/** 1 if this process was started by orcwire_shm_spawn, else 0. */
int orcwire_shm_is_launched_executor(void);
/** Executor: attaches to the segment inherited from orcwire_shm_spawn.
 *  The caller owns *out. Call once per process. */
orcwire_status orcwire_shm_attach_inherited(const orcwire_shm_config *config, orcwire_transport **out);
/** Executor: connects to a controller listening on `path` and attaches,
 *  within timeout_ns (negative: 10 s). The caller owns *out. */
orcwire_status orcwire_shm_attach_path(const char *path, const orcwire_shm_config *config, int64_t timeout_ns,
                                       orcwire_transport **out);
/** Controller: listens on the Unix socket `path` (must not exist; mode
 *  0600). The caller owns *out. */
orcwire_status orcwire_shm_listen(const char *path, const orcwire_shm_config *config,
                                  orcwire_shm_listener **out);
/** Controller: waits up to timeout_ns (negative: no limit) for one
 *  executor and gives it a fresh segment. The caller owns *out. One
 *  thread at a time per listener. */
orcwire_status orcwire_shm_accept(orcwire_shm_listener *listener, int64_t timeout_ns, orcwire_transport **out);
/** Closes the listener and removes its socket file; accepted transports
 *  stay usable. NULL is ignored. */
void orcwire_shm_listener_free(orcwire_shm_listener *listener);

/** The process id, or -1 for NULL. */
int64_t orcwire_process_pid(const orcwire_process *process);
/** Waits up to timeout_ns (negative: no limit) for the process to exit
 *  and reaps it; *out_wait_status gets the waitpid status (WIFEXITED,
 *  ...). ORCWIRE_STATUS_TIMED_OUT while it still runs. */
orcwire_status orcwire_process_wait(orcwire_process *process, int64_t timeout_ns, int *out_wait_status);
/** Sends SIGKILL (nothing if it was reaped already). */
orcwire_status orcwire_process_kill(orcwire_process *process);
/** Frees the handle; a process not reaped yet is killed and reaped, so
 *  no zombie is left (wait for it first to let it exit on its own). NULL
 *  is ignored. */
void orcwire_process_free(orcwire_process *process);

/** Sends one message whole (an orcwire_opcode, seq, tag, `len` bytes at
 *  `bytes`, copied); blocks while the transport is full. Any number of
 *  threads at once. ORCWIRE_STATUS_IN_USE once an endpoint owns it. */
orcwire_status orcwire_transport_send(orcwire_transport *transport, uint32_t opcode, uint64_t seq, uint64_t tag,
                                      const void *bytes, size_t len);
/** Waits up to timeout_ns for the next message and stores it in *out (the
 *  caller then owns out->payload). ORCWIRE_STATUS_TIMED_OUT,
 *  ORCWIRE_STATUS_INTERRUPTED, or the reason no message will ever come
 *  (PEER_HUNG_UP, PEER_DIED, CLOSED, PROTOCOL). One thread at a time: a
 *  recv while another thread is in one returns INVALID_STATE. */
orcwire_status orcwire_transport_recv(orcwire_transport *transport, int64_t timeout_ns, orcwire_message *out);
/** Makes the current or next recv return ORCWIRE_STATUS_INTERRUPTED.
 *  Any thread, any time. */
orcwire_status orcwire_transport_interrupt_recv(orcwire_transport *transport);
/** Closes: blocked sends and receives return, the peer sees the end. A
 *  second close returns ORCWIRE_STATUS_CLOSED and does nothing. Any
 *  thread, any time. */
orcwire_status orcwire_transport_close(orcwire_transport *transport);
/** 1 if the peer process is known to have died, 0 if not, -1 for NULL.
 *  Any thread. */
int orcwire_transport_peer_died(const orcwire_transport *transport);
/** Frees the handle. Requires a prior orcwire_transport_close (or the
 *  transport having been given to an endpoint) and no other call on it
 *  running; otherwise nothing is freed and ORCWIRE_STATUS_INVALID_STATE
 *  is returned. */
orcwire_status orcwire_transport_free(orcwire_transport *transport);

/** A connection over a byte stream (pipes, a Unix socket, TCP) in LLVM's
 *  FDSimpleRemoteEPCTransport framing, so the peer may be one of LLVM's
 *  own programs. Takes ownership of read_fd and write_fd in every case
 *  (they are closed on failure); they may be the same descriptor (a
 *  socket). max_message_size 0 means 1 GiB. The caller owns *out. Any
 *  thread. */
orcwire_status orcwire_stream_from_fds(int read_fd, int write_fd, uint64_t max_message_size,
                                       orcwire_transport **out);
/** A stream transport only (ORCWIRE_STATUS_INVALID_STATE otherwise):
 *  watch the peer process `pid`, a child this process started, so that an
 *  end of stream without a Hangup is reported as ORCWIRE_STATUS_PEER_DIED
 *  when the process was killed, and as a hang-up when it exited normally.
 *  Any thread. */
orcwire_status orcwire_stream_watch_process(orcwire_transport *transport, uint32_t pid);

/* ------------------------------------------------------------------ */
/* The endpoint level (orc-rt's ControllerAccess)                      */
/* ------------------------------------------------------------------ */

typedef enum orcwire_role { ORCWIRE_ROLE_CONTROLLER = 0, ORCWIRE_ROLE_EXECUTOR = 1 } orcwire_role;

typedef struct orcwire_builder orcwire_builder;
/** A connected endpoint. Calls, tag look-ups and disconnect from any
 *  thread; free from one thread once nothing else uses it. */
typedef struct orcwire_endpoint orcwire_endpoint;
/** The right to answer one incoming call. */
typedef struct orcwire_responder orcwire_responder;

/** A wrapper function or handler. Runs on an orcwire thread. It owns
 *  `args` (dispose of them) and `responder`, which it must consume
 *  exactly once, now or later, from any thread, with orcwire_respond or
 *  orcwire_responder_drop. A responder never consumed leaves the caller
 *  waiting until the connection ends. */
typedef void (*orcwire_handler_fn)(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *responder);
/** Completion of orcwire_call_async. Runs exactly once on an orcwire
 *  thread (one per endpoint, shared by its async calls), never inside
 *  orcwire_call_async. Owns `result`: the result bytes or an out-of-band
 *  error buffer when status is ORCWIRE_STATUS_OK, empty otherwise
 *  (DISCONNECTED, PEER_DIED, ...). */
typedef void (*orcwire_done_fn)(void *ctx, orcwire_status status, orc_rt_WrapperFunctionBuffer result);

/** Starts a builder for `role` (an orcwire_role). The caller owns *out
 *  until orcwire_builder_connect or orcwire_builder_free. One thread. */
orcwire_status orcwire_builder_new(uint32_t role, orcwire_builder **out);
/** Registers `handler` with `ctx` under `name` (copied): on an executor a
 *  function the controller calls, on a controller a handler the
 *  executor calls. ctx must stay valid until orcwire_endpoint_free
 *  returns. */
orcwire_status orcwire_builder_add_function(orcwire_builder *builder, const char *name, orcwire_handler_fn handler,
                                            void *ctx);
/** Executor only: declares a controller handler this executor will call;
 *  ORCWIRE_STATUS_INVALID_STATE on a controller builder. */
orcwire_status orcwire_builder_declare_controller_handler(orcwire_builder *builder, const char *name);

/** What an executor speaks to its controller. A controller learns the
 *  executor's from its Setup message. */
typedef enum orcwire_dialect {
  ORCWIRE_DIALECT_ORCWIRE = 0, /* two orcwire endpoints (the default) */
  ORCWIRE_DIALECT_LLVM14 = 1,  /* LLVM 14's SimpleRemoteEPC as the controller */
  ORCWIRE_DIALECT_LLVM15 = 2   /* LLVM 15 or later as the controller */
} orcwire_dialect;
/** Executor builders only (ORCWIRE_STATUS_INVALID_STATE otherwise): speak
 *  `dialect` (an orcwire_dialect). With an LLVM dialect no controller
 *  handler may be declared (connect fails), error results reach LLVM as
 *  empty results, and LLVM's bootstrap services are published as
 *  placeholders answering errors. One thread at a time per builder. */
orcwire_status orcwire_builder_set_dialect(orcwire_builder *builder, uint32_t dialect);
/** Connects on `transport`: an executor sends its Setup, a controller
 *  waits (5 s) for the executor's. Consumes `builder` in every case. The
 *  transport then belongs to the endpoint (raw send/recv are refused;
 *  the handle may be freed without closing). On failure the transport is
 *  closed. The caller owns *out. */
orcwire_status orcwire_builder_connect(orcwire_builder *builder, orcwire_transport *transport,
                                       orcwire_endpoint **out);
/** Frees a builder that was not connected. NULL is ignored. */
void orcwire_builder_free(orcwire_builder *builder);

/** Controller: the tag of the executor function `name`. NOT_FOUND when
 *  the executor did not publish it; INVALID_STATE on an executor. */
orcwire_status orcwire_function_tag(const orcwire_endpoint *endpoint, const char *name, uint64_t *out_tag);
/** Executor: the tag of the declared controller handler `name`.
 *  INVALID_STATE on a controller. */
orcwire_status orcwire_handler_tag(const orcwire_endpoint *endpoint, const char *name, uint64_t *out_tag);

/** Calls `tag` with `len` bytes at `args` (copied) and waits for the
 *  result, at most timeout_ns in all. On ORCWIRE_STATUS_OK the caller
 *  owns *out: the result bytes, or an out-of-band error (unknown tag,
 *  handler error). On failure *out is empty. Any thread, also inside a
 *  handler (ORCWIRE_STATUS_WOULD_DEADLOCK when it could never finish). */
orcwire_status orcwire_call_sync(const orcwire_endpoint *endpoint, uint64_t tag, const void *args, size_t len,
                                 int64_t timeout_ns, orc_rt_WrapperFunctionBuffer *out);
/** Calls `tag` and returns once it is sent; done(ctx, ...) runs later,
 *  exactly once, on the endpoint's completion thread. If this returns an
 *  error, done is never called. Any thread. */
orcwire_status orcwire_call_async(const orcwire_endpoint *endpoint, uint64_t tag, const void *args, size_t len,
                                  orcwire_done_fn done, void *ctx);

/** Many calls in flight from one thread, sent in batches (sixteen frames
 *  per publication), results taken in submission order: the shape for
 *  throughput. One thread at a time per pipeline. */
typedef struct orcwire_pipeline orcwire_pipeline;

/** A new pipeline of calls on `endpoint`; the caller owns *out
 *  (orcwire_pipeline_free, before or after the endpoint's). */
orcwire_status orcwire_pipeline_new(const orcwire_endpoint *endpoint, orcwire_pipeline **out);
/** Stages a call of `tag` with `len` bytes at `args` (copied). Never
 *  blocks; a call that cannot be sent yields its error from
 *  orcwire_pipeline_next in its place. */
orcwire_status orcwire_pipeline_submit(orcwire_pipeline *pipeline, uint64_t tag, const void *args, size_t len);
/** Sends every staged call, waiting for room at most timeout_ns
 *  (negative: no limit). TIMED_OUT leaves the rest staged. */
orcwire_status orcwire_pipeline_flush(orcwire_pipeline *pipeline, int64_t timeout_ns);
/** The oldest call's result, waiting at most timeout_ns (staged calls are
 *  sent first if it has to wait). On ORCWIRE_STATUS_OK the caller owns
 *  *out (bytes, or an out-of-band error). A failed call returns its status
 *  (DISCONNECTED, PEER_DIED, TOO_LARGE, BUSY, ...) with *out empty and is
 *  gone. TIMED_OUT and WOULD_DEADLOCK leave it in flight (ask again).
 *  INVALID_STATE when no call is in flight. */
orcwire_status orcwire_pipeline_next(orcwire_pipeline *pipeline, int64_t timeout_ns, orc_rt_WrapperFunctionBuffer *out);
/** Calls whose results were not taken yet, staged ones included (0 for
 *  NULL). */
size_t orcwire_pipeline_in_flight(const orcwire_pipeline *pipeline);
/** Frees the pipeline: staged calls are never sent, results of sent ones
 *  are discarded when they arrive. NULL is ignored. */
void orcwire_pipeline_free(orcwire_pipeline *pipeline);

/** Answers the call with `result` (bytes, or an error made with
 *  orcwire_buffer_from_error). Consumes `responder` and `result` in every
 *  case (a NULL responder included). Any thread, once per responder.
 *  After a disconnect the result is dropped. */
orcwire_status orcwire_respond(orcwire_responder *responder, orc_rt_WrapperFunctionBuffer result);
/** Consumes the responder without a result: the caller gets an
 *  out-of-band error ("the handler finished without answering"), as
 *  when a Rust responder is dropped. Any thread. */
orcwire_status orcwire_responder_drop(orcwire_responder *responder);

/** Disconnects. Returns once no call can be made or accepted on this
 *  side, no handler of this endpoint starts any more, the peer was told,
 *  every pending call has completed (with DISCONNECTED if no result
 *  came), and every orcwire_call_async callback has run (not waited for
 *  when called from a callback). Any number of threads at once, also
 *  inside a handler or a completion callback; every caller gets
 *  ORCWIRE_STATUS_OK. */
orcwire_status orcwire_endpoint_disconnect(const orcwire_endpoint *endpoint);
/** 1 once fully disconnected (by either side or the peer's death), 0
 *  before, -1 for NULL. Any thread. */
int orcwire_endpoint_is_disconnected(const orcwire_endpoint *endpoint);
/** Waits up to timeout_ns (negative: no limit) until the endpoint is
 *  disconnected by either side or the peer's death (how an executor
 *  serves until its controller is done). ORCWIRE_STATUS_TIMED_OUT if it
 *  is still connected. Any thread. */
orcwire_status orcwire_endpoint_wait_disconnected(const orcwire_endpoint *endpoint, int64_t timeout_ns);
/** Disconnects, waits for every completion callback and every running
 *  handler (except the calling thread's own), and frees the endpoint.
 *  Afterwards no handler or callback of it runs, so their contexts may
 *  be freed. Blocks as long as a handler or callback blocks. Nothing
 *  else may use the endpoint during or after. */
orcwire_status orcwire_endpoint_free(orcwire_endpoint *endpoint);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ORCWIRE_H */
