/* The executor program the C controller spawns over shared memory.
 * argv[1] picks the scenario:
 *   messages  echo every CallWrapper as a Result with each byte + 1, at
 *             the message level, until the controller hangs up
 *   endpoint  publish C wrapper functions (answering at once, later from
 *             another thread, never, with an error, by calling the
 *             controller back) and call the controller's handlers
 *   kill      publish "hang", which never answers, and wait to be killed
 * Exits 0 when every check passed. */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>


/* ---- messages ---- */

static int serve_messages(void) {
  orcwire_transport *t = NULL;
  CHECK_OK(orcwire_shm_attach_inherited(NULL, &t));
  for (;;) {
    orcwire_message m;
    orcwire_status s = orcwire_transport_recv(t, 10 * SEC, &m);
    if (s == ORCWIRE_STATUS_PEER_HUNG_UP) break;
    CHECK_OK(s);
    CHECK(m.opcode == ORCWIRE_OPCODE_CALL_WRAPPER);
    size_t n = orcwire_buffer_size(&m.payload);
    char *d = orcwire_buffer_data(&m.payload);
    for (size_t i = 0; i < n; i++) d[i] = (char)(d[i] + 1);
    CHECK_OK(orcwire_transport_send(t, ORCWIRE_OPCODE_RESULT, m.seq, 0, d, n));
    orcwire_buffer_dispose(&m.payload);
  }
  CHECK_OK(orcwire_transport_close(t));
  CHECK_OK(orcwire_transport_free(t));
  return 0;
}

/* ---- endpoint ---- */

static _Atomic(orcwire_endpoint *) g_ep;
static orcwire_responder *g_held; /* "hold"'s responder, dropped at exit */
static pthread_t g_later[64];
static atomic_int g_later_count;

static void add_one(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  size_t n = orcwire_buffer_size(&args);
  char *d = orcwire_buffer_data(&args);
  for (size_t i = 0; i < n; i++) d[i] = (char)(d[i] + 1);
  CHECK_OK(orcwire_respond(r, args)); /* the arguments become the result */
}

static void *respond_later(void *arg) {
  orcwire_responder *r = arg;
  sleep_ns(10 * MS);
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_buffer_from_bytes("answered later", 14, &out));
  CHECK_OK(orcwire_respond(r, out));
  return NULL;
}

static void later(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  int i = atomic_fetch_add(&g_later_count, 1);
  CHECK(i < 64);
  CHECK(pthread_create(&g_later[i], NULL, respond_later, r) == 0);
}

static void drop_it(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  CHECK_OK(orcwire_responder_drop(r));
}

static void fail(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  orc_rt_WrapperFunctionBuffer e;
  CHECK_OK(orcwire_buffer_from_error("nope", &e));
  CHECK_OK(orcwire_respond(r, e));
}

static void hold(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  CHECK(g_held == NULL);
  g_held = r;
}

/* Never answers: the controller kills us while these are pending. */
static orcwire_responder *g_hung[256];
static atomic_int g_hung_count;

static void hang(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  int i = atomic_fetch_add(&g_hung_count, 1);
  CHECK(i < 256);
  g_hung[i] = r;
}

/* Calls the controller's "double" from inside a handler. */
static void ask_controller(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  /* A call can arrive before connect has returned the endpoint to us. */
  long long deadline = now_ns() + 5 * SEC;
  orcwire_endpoint *ep;
  while ((ep = atomic_load(&g_ep)) == NULL) {
    CHECK(now_ns() < deadline);
    sleep_ns(MS);
  }
  uint64_t tag;
  CHECK_OK(orcwire_handler_tag(ep, "double", &tag));
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_call_sync(ep, tag, orcwire_buffer_data(&args), orcwire_buffer_size(&args), 5 * SEC, &out));
  orcwire_buffer_dispose(&args);
  CHECK_OK(orcwire_respond(r, out));
}

static atomic_int g_notes_done;

static void note_done(void *ctx, orcwire_status s, orc_rt_WrapperFunctionBuffer result) {
  CHECK(ctx == &g_notes_done);
  CHECK_OK(s);
  CHECK(orcwire_buffer_size(&result) == 2 && memcmp(orcwire_buffer_data(&result), "ok", 2) == 0);
  orcwire_buffer_dispose(&result);
  atomic_fetch_add(&g_notes_done, 1);
}

static int serve_endpoint(int kill_scenario) {
  orcwire_transport *t = NULL;
  CHECK(orcwire_shm_is_launched_executor() == 1);
  CHECK_OK(orcwire_shm_attach_inherited(NULL, &t));
  orcwire_builder *b = NULL;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_EXECUTOR, &b));
  if (kill_scenario) {
    CHECK_OK(orcwire_builder_add_function(b, "hang", hang, NULL));
  } else {
    CHECK_OK(orcwire_builder_add_function(b, "add_one", add_one, NULL));
    CHECK_OK(orcwire_builder_add_function(b, "later", later, NULL));
    CHECK_OK(orcwire_builder_add_function(b, "drop", drop_it, NULL));
    CHECK_OK(orcwire_builder_add_function(b, "fail", fail, NULL));
    CHECK_OK(orcwire_builder_add_function(b, "hold", hold, NULL));
    CHECK_OK(orcwire_builder_add_function(b, "ask_controller", ask_controller, NULL));
    CHECK_OK(orcwire_builder_declare_controller_handler(b, "double"));
    CHECK_OK(orcwire_builder_declare_controller_handler(b, "note"));
  }
  orcwire_endpoint *ep = NULL;
  CHECK_OK(orcwire_builder_connect(b, t, &ep));
  atomic_store(&g_ep, ep);
  /* The endpoint owns the transport now. */
  orcwire_message m;
  CHECK_STATUS(orcwire_transport_recv(t, 0, &m), ORCWIRE_STATUS_IN_USE);
  CHECK_STATUS(orcwire_transport_send(t, ORCWIRE_OPCODE_SETUP, 0, 0, NULL, 0), ORCWIRE_STATUS_IN_USE);
  CHECK_OK(orcwire_transport_free(t));

  uint64_t tag;
  CHECK_STATUS(orcwire_function_tag(ep, "add_one", &tag), ORCWIRE_STATUS_INVALID_STATE);
  if (!kill_scenario) {
    CHECK_STATUS(orcwire_handler_tag(ep, "missing", &tag), ORCWIRE_STATUS_NOT_FOUND);
    CHECK_OK(orcwire_handler_tag(ep, "note", &tag));
    orc_rt_WrapperFunctionBuffer out;
    CHECK_OK(orcwire_call_sync(ep, tag, "sync", 4, 5 * SEC, &out));
    CHECK(orcwire_buffer_size(&out) == 2 && memcmp(orcwire_buffer_data(&out), "ok", 2) == 0);
    orcwire_buffer_dispose(&out);
    CHECK_OK(orcwire_call_async(ep, tag, "async", 5, note_done, &g_notes_done));
    long long deadline = now_ns() + 5 * SEC;
    while (atomic_load(&g_notes_done) < 1) {
      CHECK(now_ns() < deadline);
      sleep_ns(MS);
    }
  }
  /* Serve until the controller disconnects (or kills us). */
  CHECK_STATUS(orcwire_endpoint_wait_disconnected(ep, 0), ORCWIRE_STATUS_TIMED_OUT);
  CHECK_OK(orcwire_endpoint_wait_disconnected(ep, 30 * SEC));
  CHECK(orcwire_endpoint_is_disconnected(ep) == 1);
  CHECK_OK(orcwire_endpoint_free(ep));
  for (int i = 0; i < atomic_load(&g_later_count); i++) CHECK(pthread_join(g_later[i], NULL) == 0);
  if (g_held != NULL) CHECK_OK(orcwire_responder_drop(g_held)); /* after free: dropped quietly */
  return 0;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  CHECK_OK(ORCWIRE_CHECK_ABI());
  if (strcmp(argv[1], "messages") == 0) return serve_messages();
  if (strcmp(argv[1], "endpoint") == 0) return serve_endpoint(0);
  if (strcmp(argv[1], "kill") == 0) return serve_endpoint(1);
  fprintf(stderr, "unknown scenario %s\n", argv[1]);
  return 2;
}
