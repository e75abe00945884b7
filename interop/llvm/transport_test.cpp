// OrcwireShmTransport against LLVM's transport contract, with a client
// that counts what it is told: the executor's Setup arrives; disconnect()
// called from four threads at once (and again afterwards) ends in exactly
// one handleDisconnect, promptly; and when the executor is killed, the
// transport reports it once, as an error, within a bounded time. Prints
// one line per check; exit status 0 when all passed.
//
// Usage: transport_test EXECUTOR   (jit_executor)

#include "OrcwireShmTransport.h"

#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace llvm;
using namespace llvm::orc;

static int Failures = 0;

static void expect(bool Ok, const std::string &What) {
  outs() << (Ok ? "ok " : "FAILED ") << What << "\n";
  outs().flush();
  if (!Ok)
    ++Failures;
}

/// Counts messages and disconnects.
class CountingClient : public SimpleRemoteEPCTransportClient {
public:
  Expected<HandleMessageAction> handleMessage(SimpleRemoteEPCOpcode OpC, uint64_t, ExecutorAddr,
                                              SimpleRemoteEPCArgBytesVector) override {
    std::lock_guard<std::mutex> L(M);
    if (OpC == SimpleRemoteEPCOpcode::Setup)
      ++Setups;
    CV.notify_all();
    return ContinueSession;
  }
  void handleDisconnect(Error Err) override {
    std::lock_guard<std::mutex> L(M);
    ++Disconnects;
    HadError = bool(Err);
    consumeError(std::move(Err));
    CV.notify_all();
  }
  /// Waits up to `Ms` for `Pred`.
  template <typename P> bool waitFor(int Ms, P Pred) {
    std::unique_lock<std::mutex> L(M);
    return CV.wait_for(L, std::chrono::milliseconds(Ms), Pred);
  }
  std::mutex M;
  std::condition_variable CV;
  int Setups = 0, Disconnects = 0;
  bool HadError = false;
};

static std::unique_ptr<orcwire::OrcwireShmTransport> spawn(const char *Executor, CountingClient &C,
                                                           orcwire_process **P) {
  const char *Argv[] = {Executor, nullptr};
  orcwire_transport *T = nullptr;
  if (orcwire_shm_spawn(Argv, nullptr, -1, &T, P) != ORCWIRE_STATUS_OK)
    return nullptr;
  auto Tr = orcwire::OrcwireShmTransport::Create(C, T);
  if (!Tr) {
    consumeError(Tr.takeError());
    return nullptr;
  }
  if (auto Err = (*Tr)->start()) {
    consumeError(std::move(Err));
    return nullptr;
  }
  return std::move(*Tr);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    errs() << "usage: transport_test EXECUTOR\n";
    return 2;
  }
  {
    CountingClient C;
    orcwire_process *P = nullptr;
    auto T = spawn(argv[1], C, &P);
    expect(T != nullptr, "spawn and start");
    if (!T)
      return 1;
    expect(C.waitFor(10000, [&] { return C.Setups == 1; }), "the executor's Setup arrives");
    auto Start = std::chrono::steady_clock::now();
    std::vector<std::thread> Threads;
    for (int I = 0; I < 4; ++I)
      Threads.emplace_back([&] { T->disconnect(); });
    for (auto &Th : Threads)
      Th.join();
    T->disconnect();
    bool Once = C.waitFor(5000, [&] { return C.Disconnects >= 1; });
    auto Ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - Start);
    expect(Once && Ms.count() < 1000, "disconnect from 4 threads ends within a second (" +
                                          std::to_string(Ms.count()) + " ms)");
    T.reset(); // joins the listener
    expect(C.Disconnects == 1, "handleDisconnect called exactly once (" + std::to_string(C.Disconnects) + ")");
    int St = 0;
    orcwire_process_kill(P); // the executor waits for a Hangup we never sent
    orcwire_process_wait(P, 10LL * 1000 * 1000 * 1000, &St);
    orcwire_process_free(P);
  }
  {
    CountingClient C;
    orcwire_process *P = nullptr;
    auto T = spawn(argv[1], C, &P);
    expect(T && C.waitFor(10000, [&] { return C.Setups == 1; }), "second executor up");
    if (!T)
      return 1;
    auto Start = std::chrono::steady_clock::now();
    orcwire_process_kill(P);
    bool Once = C.waitFor(5000, [&] { return C.Disconnects >= 1; });
    auto Ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - Start);
    expect(Once && C.HadError && Ms.count() < 1000,
           "a killed executor ends the session with an error within a second (" + std::to_string(Ms.count()) +
               " ms)");
    T.reset();
    expect(C.Disconnects == 1, "handleDisconnect called exactly once after the kill");
    int St = 0;
    orcwire_process_wait(P, 10LL * 1000 * 1000 * 1000, &St);
    orcwire_process_free(P);
  }
  return Failures == 0 ? 0 : 1;
}
