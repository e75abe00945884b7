/* The other way in, in one process: a controller listens on a path and
 * accepts; an executor thread connects to the path. Then an endpoint on
 * each side, a call both ways, the executor disconnecting from inside a
 * handler, and a listener freed with its socket file removed. */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_path[256];
static orcwire_transport *g_exec_t;
static orcwire_endpoint *_Atomic g_exec_ep;

static void *attach(void *arg) {
  (void)arg;
  CHECK_OK(orcwire_shm_attach_path(g_path, NULL, 5 * SEC, &g_exec_t));
  return NULL;
}

static void echo(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  CHECK_OK(orcwire_respond(r, args));
}

/* Disconnects its own endpoint from inside the handler, then answers. */
static void hang_up(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx;
  orcwire_buffer_dispose(&args);
  orcwire_endpoint *ep;
  long long deadline = now_ns() + 5 * SEC;
  while ((ep = atomic_load(&g_exec_ep)) == NULL) {
    CHECK(now_ns() < deadline);
    sleep_ns(MS);
  }
  CHECK_OK(orcwire_endpoint_disconnect(ep));
  CHECK(orcwire_endpoint_is_disconnected(ep) == 1);
  CHECK_OK(orcwire_responder_drop(r)); /* the caller has failed already */
}

static void *executor(void *arg) {
  (void)arg;
  orcwire_builder *b = NULL;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_EXECUTOR, &b));
  CHECK_OK(orcwire_builder_add_function(b, "echo", echo, NULL));
  CHECK_OK(orcwire_builder_add_function(b, "hang_up", hang_up, NULL));
  CHECK_OK(orcwire_builder_declare_controller_handler(b, "echo"));
  orcwire_endpoint *ep = NULL;
  CHECK_OK(orcwire_builder_connect(b, g_exec_t, &ep));
  atomic_store(&g_exec_ep, ep);
  uint64_t tag;
  CHECK_OK(orcwire_handler_tag(ep, "echo", &tag));
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_call_sync(ep, tag, "from executor", 13, 5 * SEC, &out));
  CHECK(orcwire_buffer_size(&out) == 13 && memcmp(orcwire_buffer_data(&out), "from executor", 13) == 0);
  orcwire_buffer_dispose(&out);
  return NULL;
}

int main(void) {
  char dir[] = "/tmp/orcwire-capi-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  snprintf(g_path, sizeof g_path, "%s/ctl.sock", dir);
  orcwire_shm_listener *l = NULL;
  CHECK_OK(orcwire_shm_listen(g_path, NULL, &l));
  CHECK_STATUS(orcwire_shm_listen(g_path, NULL, &l), ORCWIRE_STATUS_LAUNCH); /* path taken */
  orcwire_transport *t = NULL;
  CHECK_STATUS(orcwire_shm_accept(l, 10 * MS, &t), ORCWIRE_STATUS_LAUNCH); /* nobody came */
  pthread_t th;
  CHECK(pthread_create(&th, NULL, attach, NULL) == 0);
  CHECK_OK(orcwire_shm_accept(l, 5 * SEC, &t));
  CHECK(pthread_join(th, NULL) == 0);

  /* Message level first: a raw message each way. */
  CHECK_OK(orcwire_transport_send(g_exec_t, ORCWIRE_OPCODE_CALL_WRAPPER, 5, 9, "ping", 4));
  orcwire_message m;
  CHECK_OK(orcwire_transport_recv(t, 5 * SEC, &m));
  CHECK(m.opcode == ORCWIRE_OPCODE_CALL_WRAPPER && m.seq == 5 && m.tag == 9 && m.payload.Size == 4);
  CHECK(memcmp(m.payload.Data.Value, "ping", 4) == 0); /* inline, as in orc-rt */
  orcwire_buffer_dispose(&m.payload);

  /* Then endpoints on the same transports. */
  CHECK(pthread_create(&th, NULL, executor, NULL) == 0);
  orcwire_builder *b = NULL;
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, &b));
  CHECK_OK(orcwire_builder_add_function(b, "echo", echo, NULL));
  orcwire_endpoint *ep = NULL;
  CHECK_OK(orcwire_builder_connect(b, t, &ep));
  uint64_t tag;
  CHECK_OK(orcwire_function_tag(ep, "echo", &tag));
  orc_rt_WrapperFunctionBuffer out;
  CHECK_OK(orcwire_call_sync(ep, tag, "0123456789", 10, 5 * SEC, &out));
  CHECK(out.Size == 10 && memcmp(out.Data.ValuePtr, "0123456789", 10) == 0);
  orcwire_buffer_dispose(&out);
  CHECK(pthread_join(th, NULL) == 0);

  CHECK_OK(orcwire_function_tag(ep, "hang_up", &tag));
  orcwire_status s = orcwire_call_sync(ep, tag, NULL, 0, 5 * SEC, &out);
  CHECK(s == ORCWIRE_STATUS_DISCONNECTED || s == ORCWIRE_STATUS_PEER_HUNG_UP);
  long long deadline = now_ns() + 5 * SEC;
  while (orcwire_endpoint_is_disconnected(ep) == 0) {
    CHECK(now_ns() < deadline);
    sleep_ns(MS);
  }
  CHECK_OK(orcwire_endpoint_free(ep));
  CHECK_OK(orcwire_endpoint_free(atomic_load(&g_exec_ep)));
  CHECK_OK(orcwire_transport_free(t));
  CHECK_OK(orcwire_transport_free(g_exec_t));
  struct stat st;
  CHECK(stat(g_path, &st) == 0);
  orcwire_shm_listener_free(l);
  CHECK(stat(g_path, &st) != 0); /* the socket file is gone */
  CHECK(rmdir(dir) == 0);
  puts("listen: ok");
  return 0;
}
