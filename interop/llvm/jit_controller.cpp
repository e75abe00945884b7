// LLVM's JIT running code in another process over orcwire shared memory:
// an LLJIT whose ExecutorProcessControl is SimpleRemoteEPC over
// OrcwireShmTransport, with jit_executor (SimpleRemoteEPCServer) spawned
// by orcwire_shm_spawn. It compiles a small IR module, hands the executor
// data through its memory (a global the controller writes), runs `main`
// there several times and checks each result. Prints one line per step;
// exit status 0 when every check passed.
//
// Usage: jit_controller EXECUTOR
//        jit_controller bench EXECUTOR N
// The bench form times N calls of the executor's `orcwire_echo` wrapper
// with 64-byte and 1 MiB arguments through SimpleRemoteEPC, over LLVM's FD
// transport on two pipes and over OrcwireShmTransport, alternating, with
// the same dispatchers on both: in place on the controller
// (InPlaceTaskDispatcher) and on the executor (ORCWIRE_JIT_INLINE=1), so
// that neither pays LLVM's thread per call and the transports are what
// differs. It prints the p50 of each.

#include "OrcwireShmTransport.h"

#include "llvm/ExecutionEngine/Orc/EPCGenericMemoryAccess.h"
#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/ExecutionEngine/Orc/Shared/OrcRTBridge.h"
#include "llvm/ExecutionEngine/Orc/ObjectLinkingLayer.h"
#include "llvm/ExecutionEngine/Orc/SimpleRemoteEPC.h"
#include "llvm/ExecutionEngine/Orc/TaskDispatch.h"
#include "llvm/IRReader/IRReader.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char **environ;

using namespace llvm;
using namespace llvm::orc;

static int Failures = 0;

static void expect(bool Ok, const std::string &What) {
  outs() << (Ok ? "ok " : "FAILED ") << What << "\n";
  outs().flush();
  if (!Ok)
    ++Failures;
}

// `sum_data` adds the four i64 in @data; `main(argc, argv)` returns
// argc * 1000 + sum_data() + add(argc, 2).
static const char *IR = R"(
@data = global [4 x i64] zeroinitializer

define i64 @sum_data() {
entry:
  %p0 = getelementptr [4 x i64], [4 x i64]* @data, i64 0, i64 0
  %p1 = getelementptr [4 x i64], [4 x i64]* @data, i64 0, i64 1
  %p2 = getelementptr [4 x i64], [4 x i64]* @data, i64 0, i64 2
  %p3 = getelementptr [4 x i64], [4 x i64]* @data, i64 0, i64 3
  %a = load i64, i64* %p0
  %b = load i64, i64* %p1
  %c = load i64, i64* %p2
  %d = load i64, i64* %p3
  %ab = add i64 %a, %b
  %cd = add i64 %c, %d
  %s = add i64 %ab, %cd
  ret i64 %s
}

define i32 @add(i32 %x, i32 %y) {
entry:
  %r = add i32 %x, %y
  ret i32 %r
}

define i32 @main(i32 %argc, i8** %argv) {
entry:
  %k = mul i32 %argc, 1000
  %s64 = call i64 @sum_data()
  %s = trunc i64 %s64 to i32
  %a = call i32 @add(i32 %argc, i32 2)
  %ks = add i32 %k, %s
  %r = add i32 %ks, %a
  ret i32 %r
}
)";

// LLVM 14's SimpleRemoteEPC sets up no MemoryAccess by default: give it
// the generic one over the executor's bootstrap write functions.
static SimpleRemoteEPC::Setup withMemoryAccess() {
  SimpleRemoteEPC::Setup S;
  S.CreateMemoryAccess =
      [](SimpleRemoteEPC &EPC) -> Expected<std::unique_ptr<ExecutorProcessControl::MemoryAccess>> {
    EPCGenericMemoryAccess::FuncAddrs FAs;
    if (auto Err = EPC.getBootstrapSymbols({{FAs.WriteUInt8s, rt::MemoryWriteUInt8sWrapperName},
                                            {FAs.WriteUInt16s, rt::MemoryWriteUInt16sWrapperName},
                                            {FAs.WriteUInt32s, rt::MemoryWriteUInt32sWrapperName},
                                            {FAs.WriteUInt64s, rt::MemoryWriteUInt64sWrapperName},
                                            {FAs.WriteBuffers, rt::MemoryWriteBuffersWrapperName}}))
      return std::move(Err);
    return std::make_unique<EPCGenericMemoryAccess>(EPC, FAs);
  };
  return S;
}

static std::unique_ptr<TaskDispatcher> dispatcher(bool InPlace) {
  if (InPlace)
    return std::make_unique<InPlaceTaskDispatcher>();
  return std::make_unique<DynamicThreadPoolTaskDispatcher>();
}

static Expected<std::unique_ptr<SimpleRemoteEPC>> connectOrcwire(const char *Executor,
                                                                 orcwire_process **Process,
                                                                 bool InPlace = false) {
  const char *Argv[] = {Executor, nullptr};
  orcwire_transport *T = nullptr;
  // The benchmark spins longest before sleeping (lowest latency); the JIT
  // run takes the defaults.
  orcwire_shm_config Config = {InPlace ? ORCWIRE_WAIT_LOWEST_LATENCY : ORCWIRE_WAIT_DEFAULT, 0, 0, 0};
  orcwire_status S = orcwire_shm_spawn(Argv, &Config, -1, &T, Process);
  if (S != ORCWIRE_STATUS_OK)
    return orcwire::statusError("orcwire_shm_spawn", S);
  return SimpleRemoteEPC::Create<orcwire::OrcwireShmTransport>(
      dispatcher(InPlace), withMemoryAccess(), T);
}

static int runJit(const char *Executor) {
  orcwire_process *Process = nullptr;
  auto EPC = connectOrcwire(Executor, &Process);
  if (!EPC) {
    outs() << "FAILED connect: " << toString(EPC.takeError()) << "\n";
    orcwire_process_free(Process);
    return 1;
  }
  expect(true, "connect over orcwire shared memory");
  auto &ES_EPC = **EPC;
  auto J = LLJITBuilder()
               .setExecutorProcessControl(std::move(*EPC))
               .setObjectLinkingLayerCreator([](ExecutionSession &ES, const Triple &) {
                 return std::make_unique<ObjectLinkingLayer>(ES, ES.getExecutorProcessControl().getMemMgr());
               })
               .create();
  if (!J) {
    outs() << "FAILED LLJIT: " << toString(J.takeError()) << "\n";
    orcwire_process_free(Process);
    return 1;
  }
  expect(true, "LLJIT on the remote executor");

  auto Ctx = std::make_unique<LLVMContext>();
  SMDiagnostic Diag;
  auto M = parseIR(MemoryBufferRef(IR, "orcwire-jit-test"), Diag, *Ctx);
  if (!M) {
    outs() << "FAILED parse: " << Diag.getMessage() << "\n";
    return 1;
  }
  if (auto Err = (*J)->addIRModule(ThreadSafeModule(std::move(M), std::move(Ctx)))) {
    outs() << "FAILED add module: " << toString(std::move(Err)) << "\n";
    return 1;
  }
  auto Main = (*J)->lookup("main");
  auto Data = (*J)->lookup("data");
  if (!Main || !Data) {
    outs() << "FAILED lookup: " << (Main ? toString(Data.takeError()) : toString(Main.takeError())) << "\n";
    return 1;
  }
  expect(Main->getAddress() != 0 && Data->getAddress() != 0, "compiled, linked and looked up in the executor");
  ExecutorAddr MainAddr(Main->getAddress()), DataAddr(Data->getAddress());

  // Data through the executor's memory: the controller writes @data.
  uint64_t Values[4] = {1, 20, 300, 4000};
  std::vector<tpctypes::UInt64Write> Writes;
  for (int I = 0; I < 4; ++I)
    Writes.push_back({DataAddr + I * 8, Values[I]});
  if (auto Err = ES_EPC.getMemoryAccess().writeUInt64s(Writes)) {
    outs() << "FAILED write @data: " << toString(std::move(Err)) << "\n";
    return 1;
  }
  expect(true, "wrote @data in the executor");

  for (int Argc = 1; Argc <= 3; ++Argc) {
    // runAsMain passes argc = Args.size().
    std::vector<std::string> Args(Argc, "x");
    auto R = ES_EPC.runAsMain(MainAddr, Args);
    int32_t Want = Argc * 1000 + 4321 + Argc + 2;
    if (!R)
      expect(false, "main: " + toString(R.takeError()));
    else
      expect(*R == Want, "main(" + std::to_string(Argc) + ") = " + std::to_string(*R) + " (want " +
                              std::to_string(Want) + ")");
  }

  // Ending the session frees the JIT'd memory in the executor, then
  // disconnects.
  if (auto Err = (*J)->getExecutionSession().endSession())
    expect(false, "end session: " + toString(std::move(Err)));
  else
    expect(true, "end session and disconnect");
  int Status = 0;
  orcwire_status S = orcwire_process_wait(Process, 10LL * 1000 * 1000 * 1000, &Status);
  expect(S == ORCWIRE_STATUS_OK && WIFEXITED(Status) && WEXITSTATUS(Status) == 0, "executor exited 0");
  orcwire_process_free(Process);
  return Failures == 0 ? 0 : 1;
}

// ---------------------------------------------------------------- bench

static Expected<std::unique_ptr<SimpleRemoteEPC>> connectFd(const char *Executor, pid_t *Pid) {
  int ToExec[2], FromExec[2];
  if (pipe(ToExec) != 0 || pipe(FromExec) != 0)
    return make_error<StringError>("pipe", inconvertibleErrorCode());
  std::string In = std::to_string(ToExec[0]), Out = std::to_string(FromExec[1]);
  const char *Argv[] = {Executor, "fd", In.c_str(), Out.c_str(), nullptr};
  posix_spawn_file_actions_t FA;
  posix_spawn_file_actions_init(&FA);
  posix_spawn_file_actions_addclose(&FA, ToExec[1]);
  posix_spawn_file_actions_addclose(&FA, FromExec[0]);
  int Rc = posix_spawn(Pid, Executor, &FA, nullptr, const_cast<char *const *>(Argv), environ);
  posix_spawn_file_actions_destroy(&FA);
  close(ToExec[0]);
  close(FromExec[1]);
  if (Rc != 0)
    return make_error<StringError>("posix_spawn", inconvertibleErrorCode());
  return SimpleRemoteEPC::Create<FDSimpleRemoteEPCTransport>(dispatcher(true), withMemoryAccess(), FromExec[0],
                                                             ToExec[1]);
}

static Expected<std::pair<long, long>> timeEcho(SimpleRemoteEPC &EPC, long N) {
  ExecutorAddr Echo;
  if (auto Err = EPC.getBootstrapSymbols({{Echo, "orcwire_echo"}}))
    return std::move(Err);
  std::pair<long, long> P50;
  for (size_t Size : {size_t(64), size_t(1) << 20}) {
    std::vector<char> Arg(Size, 7);
    long Calls = Size == 64 ? N : std::max(N / 100, 20L);
    std::vector<long> Samples;
    for (long I = 0; I < Calls; ++I) {
      auto T0 = std::chrono::steady_clock::now();
      auto R = EPC.callWrapper(Echo, ArrayRef<char>(Arg.data(), Arg.size()));
      auto T1 = std::chrono::steady_clock::now();
      if (R.size() != Size)
        return make_error<StringError>("orcwire_echo returned the wrong size", inconvertibleErrorCode());
      Samples.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(T1 - T0).count());
    }
    std::sort(Samples.begin(), Samples.end());
    (Size == 64 ? P50.first : P50.second) = Samples[Samples.size() / 2];
  }
  if (auto Err = EPC.disconnect())
    return std::move(Err);
  return P50;
}

static int bench(const char *Executor, long N) {
  setenv("ORCWIRE_JIT_INLINE", "1", 1);
  for (int Round = 0; Round < 3; ++Round) {
    pid_t Pid = 0;
    auto Fd = connectFd(Executor, &Pid);
    if (!Fd) {
      outs() << "FAILED fd connect: " << toString(Fd.takeError()) << "\n";
      return 1;
    }
    auto FdP50 = timeEcho(**Fd, N);
    Fd->reset();
    int St = 0;
    waitpid(Pid, &St, 0);
    orcwire_process *Process = nullptr;
    auto Shm = connectOrcwire(Executor, &Process, /*InPlace=*/true);
    if (!Shm) {
      outs() << "FAILED orcwire connect: " << toString(Shm.takeError()) << "\n";
      return 1;
    }
    auto ShmP50 = timeEcho(**Shm, N);
    Shm->reset();
    orcwire_process_wait(Process, 10LL * 1000 * 1000 * 1000, &St);
    orcwire_process_free(Process);
    if (!FdP50 || !ShmP50) {
      outs() << "FAILED bench: " << (FdP50 ? toString(ShmP50.takeError()) : toString(FdP50.takeError())) << "\n";
      return 1;
    }
    outs() << "round " << Round << ": 64 B p50 fd " << FdP50->first << " ns, orcwire " << ShmP50->first
           << " ns (" << format("%.2f", double(FdP50->first) / ShmP50->first) << "x); 1 MiB p50 fd " << FdP50->second
           << " ns, orcwire " << ShmP50->second << " ns ("
           << format("%.2f", double(FdP50->second) / ShmP50->second) << "x)\n";
    outs().flush();
  }
  return 0;
}

int main(int argc, char **argv) {
  InitializeNativeTarget();
  InitializeNativeTargetAsmPrinter();
  if (argc == 2)
    return runJit(argv[1]);
  if (argc == 4 && std::strcmp(argv[1], "bench") == 0)
    return bench(argv[2], std::atol(argv[3]));
  errs() << "usage: jit_controller EXECUTOR | jit_controller bench EXECUTOR N\n";
  return 2;
}
