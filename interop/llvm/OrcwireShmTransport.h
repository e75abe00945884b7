// OrcwireShmTransport: an llvm::orc::SimpleRemoteEPCTransport that moves
// SimpleRemoteEPC messages over orcwire's shared-memory rings, through
// orcwire's C ABI (capi/include/orcwire.h). Usable unchanged under LLVM's
// SimpleRemoteEPC (controller) and SimpleRemoteEPCServer (executor):
//
//   // controller: spawn the executor with a segment inherited
//   auto EPC = SimpleRemoteEPC::Create<OrcwireShmTransport>(
//       std::make_unique<DynamicThreadPoolTaskDispatcher>(),
//       SimpleRemoteEPC::Setup(), Transport);   // an orcwire_transport *
//   // executor: attach to it
//   auto Server = SimpleRemoteEPCServer::Create<OrcwireShmTransport>(
//       SetupFn, Transport);
//
// Ownership: the transport object takes the orcwire_transport handle and
// frees it when destroyed. Threads: sendMessage from any number of
// threads (orcwire serialises whole messages); one listener thread,
// started by start(), reads and hands every message to the client;
// disconnect() from any thread, any number of times. The client's
// handleDisconnect is called exactly once, by the listener thread, after
// which no message is delivered. Built against LLVM 14.
#ifndef ORCWIRE_SHM_TRANSPORT_H
#define ORCWIRE_SHM_TRANSPORT_H

#include "llvm/ExecutionEngine/Orc/Shared/SimpleRemoteEPCUtils.h"
#include "llvm/Support/Error.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

extern "C" {
#include "orcwire.h"
}

namespace orcwire {

/// An llvm::Error for an orcwire status, with orcwire's message.
inline llvm::Error statusError(const char *What, orcwire_status S) {
  const char *Detail = orcwire_last_error();
  return llvm::make_error<llvm::StringError>(
      std::string(What) + ": " + orcwire_status_name(S) + (Detail ? std::string(": ") + Detail : ""),
      llvm::inconvertibleErrorCode());
}

class OrcwireShmTransport : public llvm::orc::SimpleRemoteEPCTransport {
public:
  /// Takes ownership of `T` (freed with the transport).
  static llvm::Expected<std::unique_ptr<OrcwireShmTransport>>
  Create(llvm::orc::SimpleRemoteEPCTransportClient &C, orcwire_transport *T) {
    if (!T)
      return llvm::make_error<llvm::StringError>("OrcwireShmTransport: null orcwire_transport",
                                                 llvm::inconvertibleErrorCode());
    return std::unique_ptr<OrcwireShmTransport>(new OrcwireShmTransport(C, T));
  }

  ~OrcwireShmTransport() override {
    disconnect();
    if (Listener.joinable())
      Listener.join();
    orcwire_transport_free(T);
  }

  llvm::Error start() override {
    Listener = std::thread([this] { listenLoop(); });
    return llvm::Error::success();
  }

  llvm::Error sendMessage(llvm::orc::SimpleRemoteEPCOpcode OpC, uint64_t SeqNo,
                          llvm::orc::ExecutorAddr TagAddr, llvm::ArrayRef<char> ArgBytes) override {
    orcwire_status S = orcwire_transport_send(T, static_cast<uint32_t>(OpC), SeqNo, TagAddr.getValue(),
                                              ArgBytes.data(), ArgBytes.size());
    if (S != ORCWIRE_STATUS_OK)
      return statusError("OrcwireShmTransport::sendMessage", S);
    return llvm::Error::success();
  }

  void disconnect() override {
    // Closing wakes the listener's recv; a second close is harmless.
    if (!Disconnecting.exchange(true))
      orcwire_transport_close(T);
  }

private:
  OrcwireShmTransport(llvm::orc::SimpleRemoteEPCTransportClient &C, orcwire_transport *T) : C(C), T(T) {}

  void listenLoop() {
    llvm::Error Err = llvm::Error::success();
    while (true) {
      orcwire_message M;
      // A bounded wait, so that a disconnect is seen even if a close
      // raced the recv; close also wakes it at once.
      orcwire_status S = orcwire_transport_recv(T, 100 * 1000 * 1000, &M);
      if (S == ORCWIRE_STATUS_TIMED_OUT || S == ORCWIRE_STATUS_INTERRUPTED) {
        if (Disconnecting.load())
          break;
        continue;
      }
      if (S != ORCWIRE_STATUS_OK) {
        // The peer hung up or died, or we closed: a clean end unless it
        // was the protocol or the system.
        if (S == ORCWIRE_STATUS_PROTOCOL || S == ORCWIRE_STATUS_IO || S == ORCWIRE_STATUS_PEER_DIED)
          Err = statusError("OrcwireShmTransport", S);
        break;
      }
      llvm::orc::SimpleRemoteEPCArgBytesVector Bytes;
      if (const char *E = orcwire_buffer_error(&M.payload)) {
        (void)E; // never produced by recv: payloads are bytes
      }
      size_t N = orcwire_buffer_size(&M.payload);
      const char *D = orcwire_buffer_data(&M.payload);
      Bytes.append(D, D + N);
      orcwire_buffer_dispose(&M.payload);
      auto Action = C.handleMessage(static_cast<llvm::orc::SimpleRemoteEPCOpcode>(M.opcode), M.seq,
                                    llvm::orc::ExecutorAddr(M.tag), std::move(Bytes));
      if (!Action) {
        Err = Action.takeError();
        break;
      }
      if (*Action == llvm::orc::SimpleRemoteEPCTransportClient::EndSession)
        break;
    }
    disconnect();
    C.handleDisconnect(std::move(Err));
  }

  llvm::orc::SimpleRemoteEPCTransportClient &C;
  orcwire_transport *T;
  std::atomic<bool> Disconnecting{false};
  std::thread Listener;
};

} // namespace orcwire

#endif
