// The header under C++17 with warnings as errors, linked against the
// library: static_assert on the layouts, the ABI check, a buffer round
// trip from C++.
#include "orcwire.h"

#include <cstdio>
#include <cstring>

int main() {
  static_assert(sizeof(orc_rt_WrapperFunctionBuffer) == 16, "orc-rt layout");
  if (ORCWIRE_CHECK_ABI() != ORCWIRE_STATUS_OK) {
    std::fprintf(stderr, "%s\n", orcwire_last_error());
    return 1;
  }
  orc_rt_WrapperFunctionBuffer b;
  if (orcwire_buffer_from_bytes("from c++ with love", 18, &b) != ORCWIRE_STATUS_OK) return 1;
  bool ok = b.Size == 18 && std::memcmp(orcwire_buffer_data(&b), "from c++ with love", 18) == 0;
  orcwire_buffer_dispose(&b);
  ok = ok && orcwire_transport_close(nullptr) == ORCWIRE_STATUS_NULL_ARGUMENT;
  std::puts(ok ? "c++: ok" : "c++: FAILED");
  return ok ? 0 : 1;
}
