// SPDX-License-Identifier: MIT
//
// UnixListener: a listening Unix stream socket on the event loop. Listen() handles a socket file left
// behind by a crashed daemon (nobody accepts on it: it is removed) and refuses a path where another
// process is listening or where something that is not a socket exists. The socket file gets the
// configured mode; Close() stops accepting and removes the file.
//
// Loop thread only.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <filesystem>
#include <functional>
#include <memory>

#include "broker/status.h"

namespace sluice::net {

class UnixListener {
 public:
  // Receives each accepted connection as an initialized uv_pipe_t the callee now owns.
  using AcceptFn = std::function<void(uv_pipe_t* client)>;

  static Result<std::unique_ptr<UnixListener>> Listen(uv_loop_t* loop, const std::filesystem::path& path,
                                                      mode_t mode, AcceptFn on_accept);
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Stops accepting and removes the socket file. Idempotent.
  void Close();

 private:
  UnixListener(uv_loop_t* loop, std::filesystem::path path, AcceptFn on_accept);
  static void OnConnection(uv_stream_t* server, int status);

  uv_loop_t* loop_;
  std::filesystem::path path_;
  AcceptFn on_accept_;
  uv_pipe_t* pipe_ = nullptr;
};

// Removes a stale socket file at `path`: Ok when nothing is there or the file was a socket nobody
// listens on; an error naming the path when a process is listening or the file is not a socket.
Status RemoveStaleSocket(const std::filesystem::path& path);

}  // namespace sluice::net
