/* The orc-rt buffer helpers, status names, the last error, the ABI check,
 * and NULL handles given to every entry point (error codes, never a
 * crash). Single process, no peer. */
#include "common.h"

static void check_shape(size_t len) {
  char *src = malloc(len + 1);
  CHECK(src != NULL);
  for (size_t i = 0; i < len; i++) src[i] = (char)(i * 7 + 1);
  orc_rt_WrapperFunctionBuffer b;
  CHECK_OK(orcwire_buffer_from_bytes(src, len, &b));
  CHECK(b.Size == len);
  CHECK(orcwire_buffer_size(&b) == len);
  CHECK(orcwire_buffer_error(&b) == NULL);
  if (len <= sizeof(b.Data.Value)) {
    /* Inline: the data pointer is inside the struct, as in orc-rt. */
    CHECK(orcwire_buffer_data(&b) == b.Data.Value);
  } else {
    CHECK(orcwire_buffer_data(&b) == b.Data.ValuePtr);
  }
  CHECK(memcmp(orcwire_buffer_data(&b), src, len) == 0);
  orcwire_buffer_dispose(&b);
  CHECK(b.Size == 0 && b.Data.ValuePtr == NULL);
  orcwire_buffer_dispose(&b); /* a second dispose is harmless */
  free(src);
}

int main(void) {
  CHECK_OK(ORCWIRE_CHECK_ABI());
  CHECK_STATUS(orcwire_check_abi(ORCWIRE_ABI_VERSION, 24, sizeof(orcwire_message)), ORCWIRE_STATUS_ABI_MISMATCH);
  CHECK(strstr(orcwire_last_error(), "rebuild") != NULL);
  CHECK_STATUS(orcwire_check_abi(ORCWIRE_ABI_VERSION + 1, 16, 40), ORCWIRE_STATUS_ABI_MISMATCH);

  CHECK(strcmp(orcwire_status_name(ORCWIRE_STATUS_OK), "ORCWIRE_STATUS_OK") == 0);
  CHECK(strcmp(orcwire_status_name(ORCWIRE_STATUS_PEER_DIED), "ORCWIRE_STATUS_PEER_DIED") == 0);
  CHECK(strcmp(orcwire_status_name(ORCWIRE_STATUS_PANIC), "ORCWIRE_STATUS_PANIC") == 0);
  CHECK(strcmp(orcwire_status_name(999), "ORCWIRE_STATUS_(unknown)") == 0);

  size_t sizes[] = {0, 1, 7, 8, 9, 78, 79, 4096, 1 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_shape(sizes[i]);

  orc_rt_WrapperFunctionBuffer b;
  orcwire_buffer_init(&b);
  CHECK(b.Size == 0 && b.Data.ValuePtr == NULL && orcwire_buffer_error(&b) == NULL);
  CHECK_OK(orcwire_buffer_allocate(100, &b));
  CHECK(b.Size == 100);
  char *d = orcwire_buffer_data(&b);
  for (int i = 0; i < 100; i++) CHECK(d[i] == 0);
  memset(d, 'x', 100);
  orcwire_buffer_dispose(&b);
  CHECK_OK(orcwire_buffer_allocate(3, &b));
  CHECK(b.Size == 3 && orcwire_buffer_data(&b) == b.Data.Value);
  orcwire_buffer_dispose(&b);

  CHECK_OK(orcwire_buffer_from_error("no such handler", &b));
  CHECK(b.Size == 0 && b.Data.ValuePtr != NULL);
  CHECK(strcmp(orcwire_buffer_error(&b), "no such handler") == 0);
  CHECK(orcwire_buffer_data(&b) == NULL);
  /* orc-rt's own rule: an error's message is malloc'd, so free() works. */
  free(b.Data.ValuePtr);

  /* Errors as codes, with a message. */
  CHECK_STATUS(orcwire_buffer_from_bytes(NULL, 5, &b), ORCWIRE_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(orcwire_last_error(), "NULL") != NULL);
  CHECK_STATUS(orcwire_buffer_from_bytes("x", 1, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_OK(orcwire_buffer_from_bytes(NULL, 0, &b));
  CHECK_STATUS(orcwire_buffer_from_error(NULL, &b), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_buffer_allocate(1, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK(orcwire_buffer_data(NULL) == NULL);
  CHECK(orcwire_buffer_size(NULL) == 0);
  CHECK(orcwire_buffer_error(NULL) == NULL);
  orcwire_buffer_dispose(NULL);
  orcwire_buffer_init(NULL);

  /* NULL handles at every entry point. */
  orcwire_message m;
  CHECK_STATUS(orcwire_transport_send(NULL, ORCWIRE_OPCODE_SETUP, 0, 0, NULL, 0), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_transport_recv(NULL, 0, &m), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_transport_interrupt_recv(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_transport_close(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK(orcwire_transport_peer_died(NULL) == -1);
  CHECK_STATUS(orcwire_transport_free(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  orcwire_transport *t = NULL;
  orcwire_process *p = NULL;
  CHECK_STATUS(orcwire_shm_spawn(NULL, NULL, -1, &t, &p), ORCWIRE_STATUS_NULL_ARGUMENT);
  const char *empty_argv[] = {NULL};
  CHECK_STATUS(orcwire_shm_spawn(empty_argv, NULL, -1, &t, &p), ORCWIRE_STATUS_INVALID_ARGUMENT);
  const char *bad_argv[] = {"/nonexistent/orcwire-executor", NULL};
  CHECK_STATUS(orcwire_shm_spawn(bad_argv, NULL, -1, &t, &p), ORCWIRE_STATUS_LAUNCH);
  CHECK(strstr(orcwire_last_error(), "could not start") != NULL);
  orcwire_shm_config bad_cfg = {ORCWIRE_WAIT_DEFAULT, 0, 5000, 0};
  const char *true_argv[] = {"true", NULL};
  CHECK_STATUS(orcwire_shm_spawn(true_argv, &bad_cfg, -1, &t, &p), ORCWIRE_STATUS_INVALID_ARGUMENT);
  bad_cfg.ring_capacity = 0;
  bad_cfg.wait = 17;
  CHECK_STATUS(orcwire_shm_spawn(true_argv, &bad_cfg, -1, &t, &p), ORCWIRE_STATUS_INVALID_ARGUMENT);
  CHECK(orcwire_shm_is_launched_executor() == 0);
  CHECK_STATUS(orcwire_shm_attach_inherited(NULL, &t), ORCWIRE_STATUS_LAUNCH);
  CHECK_STATUS(orcwire_shm_attach_inherited(NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_shm_attach_path(NULL, NULL, 0, &t), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_shm_attach_path("/nonexistent/orcwire.sock", NULL, 100 * MS, &t), ORCWIRE_STATUS_LAUNCH);
  CHECK_STATUS(orcwire_shm_listen(NULL, NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_shm_accept(NULL, 0, &t), ORCWIRE_STATUS_NULL_ARGUMENT);
  orcwire_shm_listener_free(NULL);
  CHECK(orcwire_process_pid(NULL) == -1);
  int ws;
  CHECK_STATUS(orcwire_process_wait(NULL, 0, &ws), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_process_kill(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  orcwire_process_free(NULL);

  orcwire_builder *bld = NULL;
  CHECK_STATUS(orcwire_builder_new(7, &bld), ORCWIRE_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_CONTROLLER, &bld));
  CHECK_STATUS(orcwire_builder_declare_controller_handler(bld, "x"), ORCWIRE_STATUS_INVALID_STATE);
  CHECK_STATUS(orcwire_builder_add_function(bld, "x", NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_builder_add_function(bld, "\xff\xfe", NULL, NULL), ORCWIRE_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(orcwire_builder_connect(bld, NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT); /* consumed */
  CHECK_OK(orcwire_builder_new(ORCWIRE_ROLE_EXECUTOR, &bld));
  orcwire_builder_free(bld);
  orcwire_builder_free(NULL);
  CHECK_STATUS(orcwire_builder_add_function(NULL, "x", NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_builder_declare_controller_handler(NULL, "x"), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_builder_connect(NULL, NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  uint64_t tag;
  CHECK_STATUS(orcwire_function_tag(NULL, "x", &tag), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_handler_tag(NULL, "x", &tag), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_call_sync(NULL, 1, NULL, 0, -1, &b), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK(b.Size == 0 && b.Data.ValuePtr == NULL); /* *out emptied on failure */
  CHECK_STATUS(orcwire_call_async(NULL, 1, NULL, 0, NULL, NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  orc_rt_WrapperFunctionBuffer r;
  CHECK_OK(orcwire_buffer_from_bytes("0123456789", 10, &r));
  CHECK_STATUS(orcwire_respond(NULL, r), ORCWIRE_STATUS_NULL_ARGUMENT); /* r consumed */
  CHECK_STATUS(orcwire_responder_drop(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_endpoint_disconnect(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK(orcwire_endpoint_is_disconnected(NULL) == -1);
  CHECK_STATUS(orcwire_endpoint_wait_disconnected(NULL, 0), ORCWIRE_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(orcwire_endpoint_free(NULL), ORCWIRE_STATUS_NULL_ARGUMENT);
  puts("buffer: ok");
  return 0;
}
