#include <stdio.h>
#include "orcwire.h"

static void echo(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *r) {
  (void)ctx; orcwire_respond(r, args); /* the arguments become the result */
}

int main(int argc, char **argv) { /* the controller; it spawns itself as the executor */
  orcwire_transport *t; orcwire_process *p; orcwire_builder *b; orcwire_endpoint *ep;
  uint64_t tag; orc_rt_WrapperFunctionBuffer out; int st, exe = orcwire_shm_is_launched_executor();
  const char *args[] = {argv[0], NULL};
  if (argc < 1 || (exe ? orcwire_shm_attach_inherited(NULL, &t) : orcwire_shm_spawn(args, NULL, -1, &t, &p))
      || orcwire_builder_new(exe ? ORCWIRE_ROLE_EXECUTOR : ORCWIRE_ROLE_CONTROLLER, &b)
      || (exe && orcwire_builder_add_function(b, "echo", echo, NULL)) || orcwire_builder_connect(b, t, &ep))
    return fprintf(stderr, "orcwire: %s\n", orcwire_last_error()), 1;
  if (exe) return orcwire_endpoint_wait_disconnected(ep, -1), orcwire_endpoint_free(ep), orcwire_transport_free(t), 0;
  int ok = !orcwire_function_tag(ep, "echo", &tag) && !orcwire_call_sync(ep, tag, "hi", 2, -1, &out);
  printf("echo answered %.*s\n", (int)out.Size, orcwire_buffer_data(&out));
  orcwire_buffer_dispose(&out);
  orcwire_endpoint_free(ep); /* disconnects first */
  ok = ok && !orcwire_process_wait(p, -1, &st) && st == 0;
  orcwire_process_free(p); orcwire_transport_free(t);
  return ok ? 0 : 1;
}
