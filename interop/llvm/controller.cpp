// An unmodified LLVM SimpleRemoteEPC controller (built against LLVM 14,
// and against LLVM 19 where installed), for orcwire's interop
// tests (tests/llvm_interop.rs): it connects to the executor on the two
// file descriptors given, calls the executor's wrapper functions with
// several SPS signatures, checks each result, and disconnects. It prints
// one line per step; the test reads them. Exit status 0 when every step
// behaved as expected.
//
// Usage: controller IN_FD OUT_FD

#include "llvm/ExecutionEngine/Orc/Shared/SimplePackedSerialization.h"
#include "llvm/ExecutionEngine/Orc/SimpleRemoteEPC.h"
#include "llvm/ExecutionEngine/Orc/TaskDispatch.h"
#include "llvm/Config/llvm-config.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdlib>
#include <string>

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
  if (argc != 3) {
    errs() << "usage: controller IN_FD OUT_FD\n";
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
