// An unmodified LLVM SimpleRemoteEPC controller (built against LLVM 14,
// and against LLVM 19 where installed), for orcwire's interop
// tests (tests/llvm_interop.rs): it connects to the executor on the two
// file descriptors given, calls the executor's wrapper functions with
// several SPS signatures, checks each result, and disconnects. It prints
// one line per step; the test reads them. Exit status 0 when every step
// behaved as expected.
//
// Usage: controller IN_FD OUT_FD
//        controller IN_FD OUT_FD bench N
// The bench form calls the executor's mem_write_uint8s wrapper N times
// with an empty write list (the cheapest call LLVM's executor serves),
// timing each, and prints `p50_ns <nanoseconds>` (for `orcwire
// bench-llvm`).

#include "llvm/ExecutionEngine/Orc/Shared/SimplePackedSerialization.h"
#include "llvm/ExecutionEngine/Orc/SimpleRemoteEPC.h"
#include "llvm/ExecutionEngine/Orc/TaskDispatch.h"
#include "llvm/Config/llvm-config.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

using namespace llvm;
using namespace llvm::orc;
using namespace llvm::orc::shared;

static int failures = 0;

static void expect(bool ok, const std::string &what) {
  outs() << (ok ? "ok " : "FAILED ") << what << "\n";
  outs().flush();
  if (!ok)
    ++failures;
}

int main(int argc, char **argv) {
  if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "bench")) {
    errs() << "usage: controller IN_FD OUT_FD [bench N]\n";
    return 2;
  }
  int InFD = std::atoi(argv[1]);
  int OutFD = std::atoi(argv[2]);

#if LLVM_VERSION_MAJOR >= 19
  auto Dispatcher = std::make_unique<DynamicThreadPoolTaskDispatcher>(std::nullopt);
#else
  auto Dispatcher = std::make_unique<DynamicThreadPoolTaskDispatcher>();
#endif
  auto EPC = SimpleRemoteEPC::Create<FDSimpleRemoteEPCTransport>(
      std::move(Dispatcher),
      SimpleRemoteEPC::Setup(), InFD, OutFD);
  if (!EPC) {
    outs() << "FAILED create: " << toString(EPC.takeError()) << "\n";
    return 1;
  }
  expect(true, "create");
  expect((*EPC)->getTargetTriple().str().find("x86_64") == 0 ||
             (*EPC)->getTargetTriple().str().find("aarch64") == 0,
         "triple " + (*EPC)->getTargetTriple().str());

  if (argc == 5) {
    long N = std::atol(argv[4]);
    ExecutorAddr Write;
    if (auto Err = (*EPC)->getBootstrapSymbols(
            {{Write, "__llvm_orc_bootstrap_mem_write_uint8s_wrapper"}})) {
      outs() << "FAILED symbols: " << toString(std::move(Err)) << "\n";
      return 1;
    }
    // An SPS sequence of no writes: its count, 0.
    std::vector<char> Args(8, 0);
    std::vector<long> Samples;
    Samples.reserve(N);
    for (long I = 0; I < N; ++I) {
      auto T0 = std::chrono::steady_clock::now();
      auto R = (*EPC)->callWrapper(Write, ArrayRef<char>(Args.data(), Args.size()));
      auto T1 = std::chrono::steady_clock::now();
      if (R.getOutOfBandError()) {
        outs() << "FAILED call: " << R.getOutOfBandError() << "\n";
        return 1;
      }
      Samples.push_back(
          std::chrono::duration_cast<std::chrono::nanoseconds>(T1 - T0).count());
    }
    std::sort(Samples.begin(), Samples.end());
    outs() << "p50_ns " << Samples[Samples.size() / 2] << "\n";
    if (auto Err = (*EPC)->disconnect()) {
      outs() << "FAILED disconnect: " << toString(std::move(Err)) << "\n";
      return 1;
    }
    return 0;
  }

  ExecutorAddr Add, Mul64, Concat, Fail;
  if (auto Err = (*EPC)->getBootstrapSymbols(
          {{Add, "add_i32"}, {Mul64, "mul_u64"}, {Concat, "concat"}, {Fail, "fail"}})) {
    outs() << "FAILED symbols: " << toString(std::move(Err)) << "\n";
    return 1;
  }
  expect(true, "symbols");

  for (int I = 0; I < 3; ++I) {
    int32_t Sum = 0;
    if (auto Err = (*EPC)->callSPSWrapper<int32_t(int32_t, int32_t)>(Add, Sum, 40, I + 2))
      expect(false, "add_i32: " + toString(std::move(Err)));
    else
      expect(Sum == 42 + I, "add_i32 = " + std::to_string(Sum));
  }

  uint64_t Product = 0;
  if (auto Err = (*EPC)->callSPSWrapper<uint64_t(uint64_t, uint64_t)>(
          Mul64, Product, uint64_t(1) << 33, uint64_t(3)))
    expect(false, "mul_u64: " + toString(std::move(Err)));
  else
    expect(Product == (uint64_t(3) << 33), "mul_u64 = " + std::to_string(Product));

  std::string Joined;
  if (auto Err = (*EPC)->callSPSWrapper<SPSString(SPSString, SPSString)>(
          Concat, Joined, std::string("orc"), std::string("wire")))
    expect(false, "concat: " + toString(std::move(Err)));
  else
    expect(Joined == "orcwire", "concat = " + Joined);

  // An error result must reach the caller as an error, and the session
  // must go on.
  int32_t Never = 0;
  if (auto Err = (*EPC)->callSPSWrapper<int32_t()>(Fail, Never))
    expect(true, "fail is an error: " + toString(std::move(Err)));
  else
    expect(false, "fail returned " + std::to_string(Never));
  int32_t After = 0;
  if (auto Err = (*EPC)->callSPSWrapper<int32_t(int32_t, int32_t)>(Add, After, 1, 1))
    expect(false, "add after an error: " + toString(std::move(Err)));
  else
    expect(After == 2, "add after an error = " + std::to_string(After));

  if (auto Err = (*EPC)->disconnect())
    expect(false, "disconnect: " + toString(std::move(Err)));
  else
    expect(true, "disconnect");
  return failures == 0 ? 0 : 1;
}
