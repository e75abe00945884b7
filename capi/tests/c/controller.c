/* The C controller: spawns the C executor (argv[1]) over shared memory
 * and runs the scenario argv[2] against it:
 *   messages  the message level: timeouts, interrupt, a second receiver
 *             refused, echo of 0 B..1 MiB,
 *             sends from 4 threads at once, bad arguments, close while
 *             another thread waits in recv, a second close, free rules
 *   endpoint  the endpoint level both ways: sync and async calls, answers
 *             given later, dropped, as errors, a call back into the
 *             controller, unknown tags and names, a pipeline of 2,000
 *             calls in order (an unknown tag's error in its place, freed
 *             with calls in flight), then disconnect from 4
 *             threads at once with a call pending, calls after it
 *   kill      50 async calls and a sync call pending on a function that
 *             never answers; kill -9 the executor; all must fail with
 *             ORCWIRE_STATUS_PEER_DIED within 1 s
 * Exits 0 when every check passed. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>


static orcwire_transport *g_t;
static orcwire_process *g_p;

static void spawn(const char *exe, const char *scenario) {
  const char *argv[] = {exe, scenario, NULL};
  orcwire_shm_config cfg = {ORCWIRE_WAIT_BALANCED, 0, 1 << 16, 0};
  CHECK_OK(orcwire_shm_spawn(argv, &cfg, 10 * SEC, &g_t, &g_p));
  CHECK(orcwire_process_pid(g_p) > 0);
  CHECK(orcwire_transport_peer_died(g_t) == 0);
}

static void reap_expect_exit0(void) {
  int ws = 0;
  CHECK_OK(orcwire_process_wait(g_p, 10 * SEC, &ws));
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  orcwire_process_free(g_p);
}

/* ---- messages ---- */

static void roundtrip(uint64_t seq, size_t len) {
  char *src = malloc(len + 1);
  CHECK(src != NULL);
  for (size_t i = 0; i < len; i++) src[i] = (char)(i * 13 + seq);
  CHECK_OK(orcwire_transport_send(g_t, ORCWIRE_OPCODE_CALL_WRAPPER, seq, 7, src, len));
  orcwire_message m;
  CHECK_OK(orcwire_transport_recv(g_t, 10 * SEC, &m));
  CHECK(m.opcode == ORCWIRE_OPCODE_RESULT && m.seq == seq && m.tag == 0);
  CHECK(orcwire_buffer_size(&m.payload) == len);
  const char *d = orcwire_buffer_data(&m.payload);
  for (size_t i = 0; i < len; i++) CHECK(d[i] == (char)(src[i] + 1));
  orcwire_buffer_dispose(&m.payload);
  free(src);
}

static void *send_50(void *arg) {
  uint64_t base = (uint64_t)(uintptr_t)arg * 1000;
  for (uint64_t i = 0; i < 50; i++) {
    char payload[16];
    memcpy(payload, &base, 8);
    memcpy(payload + 8, &i, 8);
    CHECK_OK(orcwire_transport_send(g_t, ORCWIRE_OPCODE_CALL_WRAPPER, base + i, 1, payload, sizeof payload));
  }
  return NULL;
}

static void *interrupt_soon(void *arg) {
  (void)arg;
  sleep_ns(20 * MS);
  CHECK_OK(orcwire_transport_interrupt_recv(g_t));
  return NULL;
}

static void *recv_until_interrupted(void *arg) {
  (void)arg;
  orcwire_message m;
  orcwire_status s;
  long long until = now_ns() + 5 * SEC;
  /* The main thread polls too; whoever is inside refuses the other. */
  while ((s = orcwire_transport_recv(g_t, -1, &m)) == ORCWIRE_STATUS_INVALID_STATE) CHECK(now_ns() < until);
  CHECK_STATUS(s, ORCWIRE_STATUS_INTERRUPTED);
  return NULL;
}

static void *close_soon(void *arg) {
  (void)arg;
  sleep_ns(20 * MS);
  CHECK_OK(orcwire_transport_close(g_t));
  return NULL;
}

static int messages(const char *exe) {
  spawn(exe, "messages");
  orcwire_message m;
  CHECK_STATUS(orcwire_transport_recv(g_t, 0, &m), ORCWIRE_STATUS_TIMED_OUT);
  long long t0 = now_ns();
  CHECK_STATUS(orcwire_transport_recv(g_t, 30 * MS, &m), ORCWIRE_STATUS_TIMED_OUT);
  CHECK(now_ns() - t0 >= 30 * MS);
  /* An interrupt before the receive is kept for it... */
  CHECK_OK(orcwire_transport_interrupt_recv(g_t));
  CHECK_STATUS(orcwire_transport_recv(g_t, -1, &m), ORCWIRE_STATUS_INTERRUPTED);
  /* ...and one from another thread ends a receive with no limit. */
  pthread_t th;
  CHECK(pthread_create(&th, NULL, interrupt_soon, NULL) == 0);
  CHECK_STATUS(orcwire_transport_recv(g_t, -1, &m), ORCWIRE_STATUS_INTERRUPTED);
  CHECK(pthread_join(th, NULL) == 0);
  /* A second receiver at once is refused, not run. */
  CHECK(pthread_create(&th, NULL, recv_until_interrupted, NULL) == 0);
  long long until = now_ns() + 5 * SEC;
  orcwire_status second;
  while ((second = orcwire_transport_recv(g_t, 0, &m)) == ORCWIRE_STATUS_TIMED_OUT) CHECK(now_ns() < until);
  CHECK_STATUS(second, ORCWIRE_STATUS_INVALID_STATE);
  CHECK(strstr(orcwire_last_error(), "one thread at a time") != NULL);
  CHECK_OK(orcwire_transport_interrupt_recv(g_t));
  CHECK(pthread_join(th, NULL) == 0);

  size_t sizes[] = {0, 1, 8, 9, 100, 4096, 100000, 1 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) roundtrip(i + 1, sizes[i]);

  pthread_t senders[4];
  for (uintptr_t i = 0; i < 4; i++) CHECK(pthread_create(&senders[i], NULL, send_50, (void *)(i + 1)) == 0);
  int seen[4][50] = {{0}};
  for (int n = 0; n < 200; n++) {
    CHECK_OK(orcwire_transport_recv(g_t, 10 * SEC, &m));
    uint64_t base, i;
    CHECK(orcwire_buffer_size(&m.payload) == 16);
    const unsigned char *d = (const unsigned char *)orcwire_buffer_data(&m.payload);
    unsigned char raw[16];
    for (int k = 0; k < 16; k++) raw[k] = (unsigned char)(d[k] - 1);
    memcpy(&base, raw, 8);
    memcpy(&i, raw + 8, 8);
    CHECK(m.seq == base + i && base >= 1000 && base <= 4000 && i < 50);
    seen[base / 1000 - 1][i]++;
    orcwire_buffer_dispose(&m.payload);
  }
  for (int a = 0; a < 4; a++) {
    CHECK(pthread_join(senders[a], NULL) == 0);
    for (int i = 0; i < 50; i++) CHECK(seen[a][i] == 1);
  }

  CHECK_STATUS(orcwire_transport_send(g_t, 9, 0, 0, NULL, 0), ORCWIRE_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(orcwire_last_error(), "opcode") != NULL);
  CHECK_STATUS(orcwire_transport_send(g_t, ORCWIRE_OPCODE_CALL_WRAPPER, 0, 0, NULL, 5), ORCWIRE_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(orcwire_transport_recv(g_t, 0, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_transport_free(g_t), ORCWIRE_STATUS_INVALID_STATE); /* still open */
  CHECK(orcwire_transport_peer_died(g_t) == 0);

  /* Close from another thread while this one waits without a limit. */
  CHECK(pthread_create(&th, NULL, close_soon, NULL) == 0);
  CHECK_STATUS(orcwire_transport_recv(g_t, -1, &m), ORCWIRE_STATUS_CLOSED);
  CHECK(pthread_join(th, NULL) == 0);
  CHECK_STATUS(orcwire_transport_close(g_t), ORCWIRE_STATUS_CLOSED);
  CHECK(strstr(orcwire_last_error(), "already closed") != NULL);
  CHECK_STATUS(orcwire_transport_send(g_t, ORCWIRE_OPCODE_HANGUP, 0, 0, NULL, 0), ORCWIRE_STATUS_CLOSED);
  CHECK_STATUS(orcwire_transport_recv(g_t, 0, &m), ORCWIRE_STATUS_CLOSED);
  CHECK_OK(orcwire_transport_free(g_t));
  reap_expect_exit0(); /* the executor saw the hang-up and exited 0 */
  puts("controller messages: ok");
  return 0;
}

/* ---- endpoint ---- */

static atomic_int g_notes;

static void double_it(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  CHECK(ctx == (void *)&g_notes);
  size_t n = orcwire_buffer_size(&args);
  char *d = orcwire_buffer_data(&args);
  for (size_t i = 0; i < n; i++) d[i] = (char)(d[i] * 2);
  CHECK_OK(orcwire_respond(r, args));
}

static void note(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  atomic_fetch_add(&g_notes, 1);
  orc_rt_WrapperFunctionBuffer ok;
  CHECK_OK(orcwire_buffer_from_bytes("ok", 2, &ok));
  CHECK_OK(orcwire_respond(r, ok));
}

static orcwire_endpoint *g_ep;
static atomic_int g_done_ok, g_done_disconnected;

static void add_one_done(void *ctx, orcwire_status s, orc_rt_WrapperFunctionBuffer result) {
  uintptr_t i = (uintptr_t)ctx;
  CHECK_OK(s);
  CHECK(orcwire_buffer_size(&result) == 1 && orcwire_buffer_data(&result)[0] == (char)(i + 1));
  orcwire_buffer_dispose(&result);
  atomic_fetch_add(&g_done_ok, 1);
}

static void held_done(void *ctx, orcwire_status s, orc_rt_WrapperFunctionBuffer result) {
  (void)ctx;
  CHECK_STATUS(s, ORCWIRE_STATUS_DISCONNECTED);
  CHECK(result.Size == 0 && result.Data.ValuePtr == NULL);
  atomic_fetch_add(&g_done_disconnected, 1);
}

static void never_called(void *ctx, orcwire_status s, orc_rt_WrapperFunctionBuffer result) {
  (void)ctx;
  (void)s;
  (void)result;
  fprintf(stderr, "a done callback ran for a call that was refused\n");
  exit(1);
}

static void expect_bytes(const char *fn, const void *args, size_t len, const void *want, size_t want_len) {
  uint64_t tag;
  CHECK_OK(orcwire_function_tag(g_ep, fn, &tag));
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_call_sync(g_ep, tag, args, len, 10 * SEC, &out));
  CHECK(orcwire_buffer_error(&out) == NULL);
  CHECK(orcwire_buffer_size(&out) == want_len);
  CHECK(want_len == 0 || memcmp(orcwire_buffer_data(&out), want, want_len) == 0);
  orcwire_buffer_dispose(&out);
}

static void expect_error(uint64_t tag, const char *needle) {
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_call_sync(g_ep, tag, "x", 1, 10 * SEC, &out));
  const char *e = orcwire_buffer_error(&out);
  CHECK(e != NULL);
  if (strstr(e, needle) == NULL) {
    fprintf(stderr, "error result \"%s\" lacks \"%s\"\n", e, needle);
    exit(1);
  }
  orcwire_buffer_dispose(&out);
}

static void *disconnect_thread(void *arg) {
  (void)arg;
  CHECK_OK(orcwire_endpoint_disconnect(g_ep));
  /* When any disconnect returns, nothing is pending and nothing new goes. */
  CHECK(orcwire_endpoint_is_disconnected(g_ep) == 1);
  CHECK(atomic_load(&g_done_disconnected) == 1);
  return NULL;
}

/* The next result of a pipeline of add_one calls: call `i`'s 4 bytes,
 * each plus one. */
static void take_one(orcwire_pipeline *pipe, uint32_t i) {
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_pipeline_next(pipe, 10 * SEC, &out));
  unsigned char want[4];
  memcpy(want, &i, 4);
  for (int k = 0; k < 4; k++) want[k] = (unsigned char)(want[k] + 1);
  CHECK(orcwire_buffer_size(&out) == 4);
  CHECK(memcmp(orcwire_buffer_data(&out), want, 4) == 0);
  orcwire_buffer_dispose(&out);
}

static int endpoint(const char *exe) {
  spawn(exe, "endpoint");
  orcwire_builder *b = NULL;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, &b));
  CHECK_OK(orcwire_builder_add_function(b, "double", double_it, &g_notes));
  CHECK_OK(orcwire_builder_add_function(b, "note", note, NULL));
  CHECK_OK(orcwire_builder_connect(b, g_t, &g_ep));
  /* A transport serves one endpoint. */
  orcwire_endpoint *second = NULL;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, &b));
  CHECK_STATUS(orcwire_builder_connect(b, g_t, &second), ORCWIRE_STATUS_IN_USE);

  uint64_t tag;
  CHECK_STATUS(orcwire_function_tag(g_ep, "missing", &tag), ORCWIRE_STATUS_NOT_FOUND);
  CHECK(strstr(orcwire_last_error(), "missing") != NULL);
  CHECK_STATUS(orcwire_handler_tag(g_ep, "double", &tag), ORCWIRE_STATUS_INVALID_STATE);

  unsigned char big[1000];
  unsigned char big_plus[1000];
  for (int i = 0; i < 1000; i++) {
    big[i] = (unsigned char)i;
    big_plus[i] = (unsigned char)(i + 1);
  }
  size_t sizes[] = {0, 1, 8, 9, 1000};
  for (size_t i = 0; i < 5; i++) expect_bytes("add_one", big, sizes[i], big_plus, sizes[i]);
  expect_bytes("later", NULL, 0, "answered later", 14);
  expect_bytes("ask_controller", "\x01\x02\x03", 3, "\x02\x04\x06", 3);
  CHECK_OK(orcwire_function_tag(g_ep, "drop", &tag));
  expect_error(tag, "without answering");
  CHECK_OK(orcwire_function_tag(g_ep, "fail", &tag));
  expect_error(tag, "nope");
  expect_error(999999, "tag");

  /* 100 asynchronous calls, completed on the completion thread. */
  CHECK_OK(orcwire_function_tag(g_ep, "add_one", &tag));
  for (uintptr_t i = 0; i < 100; i++) {
    char c = (char)i;
    CHECK_OK(orcwire_call_async(g_ep, tag, &c, 1, add_one_done, (void *)i));
  }
  CHECK_STATUS(orcwire_call_async(g_ep, tag, NULL, 0, NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  long long deadline = now_ns() + 10 * SEC;
  while (atomic_load(&g_done_ok) < 100) {
    CHECK(now_ns() < deadline);
    sleep_ns(MS);
  }
  /* A pipeline: 2,000 calls to add_one, 64 in flight, results in
   * submission order. */
  orcwire_pipeline *pipe = NULL;
  CHECK_STATUS(orcwire_pipeline_new(g_ep, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_OK(orcwire_pipeline_new(g_ep, &pipe));
  orc_rt_WrapperFunctionBuffer none;
  CHECK_STATUS(orcwire_pipeline_next(pipe, SEC, &none), ORCWIRE_STATUS_INVALID_STATE);
  CHECK(strstr(orcwire_last_error(), "in flight") != NULL);
  CHECK_STATUS(orcwire_pipeline_submit(pipe, tag, NULL, 4), ORCWIRE_STATUS_INVALID_ARGUMENT);
  uint32_t taken = 0;
  for (uint32_t i = 0; i < 2000; i++) {
    if (orcwire_pipeline_in_flight(pipe) == 64) take_one(pipe, taken++);
    CHECK_OK(orcwire_pipeline_submit(pipe, tag, &i, 4));
  }
  CHECK_OK(orcwire_pipeline_flush(pipe, 10 * SEC));
  while (orcwire_pipeline_in_flight(pipe) > 0) take_one(pipe, taken++);
  CHECK(taken == 2000);
  /* An unknown tag's error comes back in its place, the calls around it
   * still answered. */
  uint32_t first = 2000, last = 2001;
  CHECK_OK(orcwire_pipeline_submit(pipe, tag, &first, 4));
  CHECK_OK(orcwire_pipeline_submit(pipe, 999999, "x", 1));
  CHECK_OK(orcwire_pipeline_submit(pipe, tag, &last, 4));
  CHECK(orcwire_pipeline_in_flight(pipe) == 3);
  take_one(pipe, first);
  CHECK_OK(orcwire_pipeline_next(pipe, 10 * SEC, &none));
  CHECK(orcwire_buffer_error(&none) != NULL && strstr(orcwire_buffer_error(&none), "tag") != NULL);
  orcwire_buffer_dispose(&none);
  take_one(pipe, last);
  /* A wait that times out leaves the call in flight ("later" answers
   * after 10 ms). */
  uint64_t later;
  CHECK_OK(orcwire_function_tag(g_ep, "later", &later));
  CHECK_OK(orcwire_pipeline_submit(pipe, later, NULL, 0));
  CHECK_STATUS(orcwire_pipeline_next(pipe, MS, &none), ORCWIRE_STATUS_TIMED_OUT);
  CHECK(strstr(orcwire_last_error(), "in flight") != NULL);
  CHECK(orcwire_pipeline_in_flight(pipe) == 1);
  CHECK_OK(orcwire_pipeline_next(pipe, 10 * SEC, &none));
  CHECK(orcwire_buffer_size(&none) == 14 && memcmp(orcwire_buffer_data(&none), "answered later", 14) == 0);
  orcwire_buffer_dispose(&none);
  /* Freed with calls in flight and staged: their results are dropped. */
  for (uint32_t i = 0; i < 10; i++) CHECK_OK(orcwire_pipeline_submit(pipe, tag, &i, 4));
  CHECK_OK(orcwire_pipeline_flush(pipe, 10 * SEC));
  CHECK_OK(orcwire_pipeline_submit(pipe, tag, &first, 4));
  orcwire_pipeline_free(pipe);
  orcwire_pipeline_free(NULL);
  CHECK(orcwire_pipeline_in_flight(NULL) == 0);

  /* The executor's calls to us (one sync, one async). */
  while (atomic_load(&g_notes) < 2) {
    CHECK(now_ns() < deadline);
    sleep_ns(MS);
  }

  /* A call left pending, then disconnect from 4 threads at once. */
  CHECK_OK(orcwire_function_tag(g_ep, "hold", &tag));
  CHECK_OK(orcwire_call_async(g_ep, tag, NULL, 0, held_done, NULL));
  sleep_ns(20 * MS); /* let it reach the executor */
  pthread_t th[4];
  for (int i = 0; i < 4; i++) CHECK(pthread_create(&th[i], NULL, disconnect_thread, NULL) == 0);
  for (int i = 0; i < 4; i++) CHECK(pthread_join(th[i], NULL) == 0);
  CHECK_OK(orcwire_endpoint_disconnect(g_ep)); /* again: returns at once */
  orc_rt_WrapperFunctionBuffer out;
  CHECK_STATUS(orcwire_call_sync(g_ep, tag, NULL, 0, SEC, &out), ORCWIRE_STATUS_DISCONNECTED);
  CHECK_STATUS(orcwire_call_async(g_ep, tag, NULL, 0, never_called, NULL), ORCWIRE_STATUS_DISCONNECTED);
  CHECK_OK(orcwire_endpoint_free(g_ep));
  CHECK(atomic_load(&g_done_disconnected) == 1);
  CHECK_OK(orcwire_transport_free(g_t)); /* given to the endpoint: no close needed */
  reap_expect_exit0();
  puts("controller endpoint: ok");
  return 0;
}

/* ---- kill ---- */

static atomic_int g_died;

static void died_done(void *ctx, orcwire_status s, orc_rt_WrapperFunctionBuffer result) {
  (void)ctx;
  (void)result;
  CHECK_STATUS(s, ORCWIRE_STATUS_PEER_DIED);
  atomic_fetch_add(&g_died, 1);
}

static void *sync_hang(void *arg) {
  uint64_t tag = *(uint64_t *)arg;
  orc_rt_WrapperFunctionBuffer out;
  CHECK_STATUS(orcwire_call_sync(g_ep, tag, NULL, 0, 10 * SEC, &out), ORCWIRE_STATUS_PEER_DIED);
  atomic_fetch_add(&g_died, 1);
  return NULL;
}

static int kill_peer(const char *exe) {
  spawn(exe, "kill");
  orcwire_builder *b = NULL;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, &b));
  CHECK_OK(orcwire_builder_connect(b, g_t, &g_ep));
  uint64_t tag;
  CHECK_OK(orcwire_function_tag(g_ep, "hang", &tag));
  for (int i = 0; i < 50; i++) CHECK_OK(orcwire_call_async(g_ep, tag, "x", 1, died_done, NULL));
  pthread_t th;
  CHECK(pthread_create(&th, NULL, sync_hang, &tag) == 0);
  sleep_ns(50 * MS);
  CHECK(atomic_load(&g_died) == 0);
  long long t0 = now_ns();
  CHECK_OK(orcwire_process_kill(g_p));
  long long deadline = t0 + 5 * SEC;
  while (atomic_load(&g_died) < 51) {
    CHECK(now_ns() < deadline);
    sleep_ns(100000);
  }
  long long elapsed = now_ns() - t0;
  CHECK(pthread_join(th, NULL) == 0);
  printf("kill: 51 pending calls failed with PEER_DIED %.1f ms after kill -9\n", (double)elapsed / MS);
  CHECK(elapsed < SEC);
  CHECK(orcwire_transport_peer_died(g_t) == 1);
  orc_rt_WrapperFunctionBuffer out;
  orcwire_status s = orcwire_call_sync(g_ep, tag, NULL, 0, SEC, &out);
  CHECK(s == ORCWIRE_STATUS_PEER_DIED || s == ORCWIRE_STATUS_DISCONNECTED);
  CHECK_OK(orcwire_endpoint_free(g_ep));
  CHECK_OK(orcwire_transport_free(g_t));
  int ws = 0;
  CHECK_OK(orcwire_process_wait(g_p, 10 * SEC, &ws));
  CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
  orcwire_process_free(g_p);
  puts("controller kill: ok");
  return 0;
}

int main(int argc, char **argv) {
  CHECK(argc == 3);
  CHECK_OK(ORCWIRE_CHECK_ABI());
  if (strcmp(argv[2], "messages") == 0) return messages(argv[1]);
  if (strcmp(argv[2], "endpoint") == 0) return endpoint(argv[1]);
  if (strcmp(argv[2], "kill") == 0) return kill_peer(argv[1]);
  fprintf(stderr, "unknown scenario %s\n", argv[2]);
  return 2;
}
