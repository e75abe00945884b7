// LLVM's SimpleRemoteEPCServer with the usual bootstrap services (memory
// manager, dylib manager, EH-frame registration) as an executor, over
// orcwire shared memory (OrcwireShmTransport; started by
// orcwire_shm_spawn) or, for comparison, over two file descriptors
// (LLVM's FDSimpleRemoteEPCTransport).
//
// Usage: jit_executor             (orcwire: the segment is inherited)
//        jit_executor fd IN OUT   (LLVM's FD transport)
//
// Besides LLVM's services it publishes `orcwire_echo`, a wrapper function
// that returns its argument bytes: the benchmark's call. With
// ORCWIRE_JIT_INLINE=1 in the environment, calls run on the thread that
// read them (an inline dispatcher) instead of a new thread per call
// (LLVM's ThreadDispatcher), so a benchmark measures the transport.

#include "OrcwireShmTransport.h"

#include "llvm/ExecutionEngine/Orc/Shared/WrapperFunctionUtils.h"
#include "llvm/ExecutionEngine/Orc/TargetProcess/SimpleExecutorMemoryManager.h"
#include "llvm/ExecutionEngine/Orc/TargetProcess/SimpleRemoteEPCServer.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdlib>
#include <cstring>

using namespace llvm;
using namespace llvm::orc;

extern "C" orc::shared::CWrapperFunctionResult orcwire_echo(const char *Data, size_t Size) {
  return shared::WrapperFunctionResult::copyFrom(Data, Size).release();
}

/// Runs each call on the thread that read it.
class InlineDispatcher : public SimpleRemoteEPCServer::Dispatcher {
public:
  void dispatch(unique_function<void()> Work) override { Work(); }
  void shutdown() override {}
};

static Error setup(SimpleRemoteEPCServer::Setup &S) {
  const char *Inline = std::getenv("ORCWIRE_JIT_INLINE");
  if (Inline && std::strcmp(Inline, "1") == 0)
    S.setDispatcher(std::make_unique<InlineDispatcher>());
  else
    S.setDispatcher(std::make_unique<SimpleRemoteEPCServer::ThreadDispatcher>());
  S.bootstrapSymbols() = SimpleRemoteEPCServer::defaultBootstrapSymbols();
  S.bootstrapSymbols()["orcwire_echo"] = ExecutorAddr::fromPtr(&orcwire_echo);
  S.services().push_back(std::make_unique<rt_bootstrap::SimpleExecutorMemoryManager>());
  return Error::success();
}

template <typename ServerPtr> static int serve(Expected<ServerPtr> Server) {
  if (!Server) {
    errs() << "jit_executor: " << toString(Server.takeError()) << "\n";
    return 1;
  }
  if (auto Err = (*Server)->waitForDisconnect()) {
    errs() << "jit_executor: " << toString(std::move(Err)) << "\n";
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && std::strcmp(argv[1], "fd") == 0)
    return serve(SimpleRemoteEPCServer::Create<FDSimpleRemoteEPCTransport>(setup, std::atoi(argv[2]),
                                                                            std::atoi(argv[3])));
  if (argc != 1 || !orcwire_shm_is_launched_executor()) {
    errs() << "usage: jit_executor (started by orcwire_shm_spawn) | jit_executor fd IN OUT\n";
    return 2;
  }
  orcwire_transport *T = nullptr;
  // With an inline dispatcher (the benchmark) spin longest before
  // sleeping, as the controller does then.
  const char *Inline = std::getenv("ORCWIRE_JIT_INLINE");
  orcwire_shm_config Config = {Inline && std::strcmp(Inline, "1") == 0 ? ORCWIRE_WAIT_LOWEST_LATENCY
                                                                      : ORCWIRE_WAIT_DEFAULT,
                               0, 0, 0};
  orcwire_status S = orcwire_shm_attach_inherited(&Config, &T);
  if (S != ORCWIRE_STATUS_OK) {
    errs() << "jit_executor: attach: " << orcwire_status_name(S) << ": " << orcwire_last_error() << "\n";
    return 1;
  }
  return serve(SimpleRemoteEPCServer::Create<orcwire::OrcwireShmTransport>(setup, T));
}
