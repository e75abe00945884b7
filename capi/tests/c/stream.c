/* The stream transport from C: a socket pair (one descriptor each way,
 * the same one for reading and writing) and a pipe pair (two descriptors
 * each way), raw messages both ways; a watched child process killed (its
 * death) or exiting (its hang-up); then an executor speaking LLVM 14's
 * dialect and a controller on a second socket pair, and a call between
 * them. Also the dialect's refusals. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void echo(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  CHECK_OK(orcwire_respond(r, args));
}

static void raw_both_ways(orcwire_transport *a, orcwire_transport *b) {
  static const char hi[] = "hello over a stream";
  CHECK_OK(orcwire_transport_send(a, ORCWIRE_OPCODE_CALL_WRAPPER, 7, 42, hi, sizeof hi));
  orcwire_message m;
  CHECK_OK(orcwire_transport_recv(b, 5 * SEC, &m));
  CHECK(m.opcode == ORCWIRE_OPCODE_CALL_WRAPPER && m.seq == 7 && m.tag == 42);
  CHECK(orcwire_buffer_size(&m.payload) == sizeof hi);
  CHECK(memcmp(orcwire_buffer_data(&m.payload), hi, sizeof hi) == 0);
  orcwire_buffer_dispose(&m.payload);
  CHECK_OK(orcwire_transport_send(b, ORCWIRE_OPCODE_RESULT, 7, 0, "ok", 2));
  CHECK_OK(orcwire_transport_recv(a, 5 * SEC, &m));
  CHECK(m.opcode == ORCWIRE_OPCODE_RESULT && orcwire_buffer_size(&m.payload) == 2);
  orcwire_buffer_dispose(&m.payload);
  /* Closing one end is the other's end of stream. */
  CHECK_OK(orcwire_transport_close(a));
  CHECK_STATUS(orcwire_transport_recv(b, 5 * SEC, &m), ORCWIRE_STATUS_PEER_HUNG_UP);
  CHECK_OK(orcwire_transport_close(b));
  CHECK_OK(orcwire_transport_free(a));
  CHECK_OK(orcwire_transport_free(b));
}

static orcwire_transport *g_exec_t;
static orcwire_endpoint *g_exec_ep;

static void *executor(void *arg) {
  (void)arg;
  orcwire_builder *b;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_EXECUTOR, &b));
  CHECK_OK(orcwire_builder_set_dialect(b, ORCWIRE_DIALECT_LLVM14));
  /* A controller that reads an LLVM Setup calls only LLVM-style wrapper
   * names (`..._wrapper`): anything else could be a data object. */
  CHECK_OK(orcwire_builder_add_function(b, "echo_wrapper", echo, NULL));
  CHECK_OK(orcwire_builder_connect(b, g_exec_t, &g_exec_ep));
  return NULL;
}

/* A child holding the other end of a socket pair ends by `kill -9`
 * (`killed`) or by exiting 0: with the process watched, the first is the
 * peer's death, the second its hang-up. */
static void watched_child(int killed) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(sv[0]);
    if (killed)
      sleep(30); /* until killed */
    _exit(0);
  }
  close(sv[1]);
  orcwire_transport *t;
  CHECK_OK(orcwire_stream_from_fds(sv[0], sv[0], 0, &t));
  CHECK_OK(orcwire_stream_watch_process(t, (uint32_t)pid));
  if (killed)
    CHECK(kill(pid, SIGKILL) == 0);
  orcwire_message m;
  CHECK_STATUS(orcwire_transport_recv(t, 5 * SEC, &m),
               killed ? ORCWIRE_STATUS_PEER_DIED : ORCWIRE_STATUS_PEER_HUNG_UP);
  CHECK(orcwire_transport_peer_died(t) == killed);
  int st;
  CHECK(waitpid(pid, &st, 0) == pid);
  CHECK_OK(orcwire_transport_close(t));
  CHECK_OK(orcwire_transport_free(t));
}

int main(void) {
  watched_child(1);
  watched_child(0);
  CHECK_STATUS(orcwire_stream_watch_process(NULL, 1), ORCWIRE_STATUS_NULL_ARGUMENT);

  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  orcwire_transport *a, *b;
  CHECK_OK(orcwire_stream_from_fds(sv[0], sv[0], 0, &a));
  CHECK_OK(orcwire_stream_from_fds(sv[1], sv[1], 0, &b));
  raw_both_ways(a, b);

  int p1[2], p2[2];
  CHECK(pipe(p1) == 0 && pipe(p2) == 0);
  CHECK_OK(orcwire_stream_from_fds(p1[0], p2[1], 1 << 20, &a));
  CHECK_OK(orcwire_stream_from_fds(p2[0], p1[1], 1 << 20, &b));
  raw_both_ways(a, b);

  CHECK_STATUS(orcwire_stream_from_fds(-1, 3, 0, &a), ORCWIRE_STATUS_INVALID_ARGUMENT);

  /* Dialects: only an executor chooses one, and only a known one. */
  orcwire_builder *cb, *eb;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, &cb));
  CHECK_STATUS(orcwire_builder_set_dialect(cb, ORCWIRE_DIALECT_LLVM14), ORCWIRE_STATUS_INVALID_STATE);
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_EXECUTOR, &eb));
  CHECK_STATUS(orcwire_builder_set_dialect(eb, 9), ORCWIRE_STATUS_INVALID_ARGUMENT);
  orcwire_builder_free(eb);

  /* A controller calling an executor that speaks LLVM 14's dialect. */
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  orcwire_transport *ct;
  CHECK_OK(orcwire_stream_from_fds(sv[0], sv[0], 0, &ct));
  CHECK_OK(orcwire_stream_from_fds(sv[1], sv[1], 0, &g_exec_t));
  pthread_t th;
  CHECK(pthread_create(&th, NULL, executor, NULL) == 0);
  orcwire_endpoint *c;
  CHECK_OK(orcwire_builder_connect(cb, ct, &c));
  CHECK(pthread_join(th, NULL) == 0);
  uint64_t tag;
  CHECK_OK(orcwire_function_tag(c, "echo_wrapper", &tag));
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_call_sync(c, tag, "llvm", 4, 5 * SEC, &out));
  CHECK(orcwire_buffer_size(&out) == 4 && memcmp(orcwire_buffer_data(&out), "llvm", 4) == 0);
  orcwire_buffer_dispose(&out);
  CHECK_OK(orcwire_endpoint_disconnect(c));
  CHECK_OK(orcwire_endpoint_wait_disconnected(g_exec_ep, 5 * SEC));
  orcwire_endpoint_free(c);
  orcwire_endpoint_free(g_exec_ep);
  CHECK_OK(orcwire_transport_free(ct));
  CHECK_OK(orcwire_transport_free(g_exec_t));
  printf("stream: ok\n");
  return 0;
}
