// SPDX-License-Identifier: MIT
#include "broker/net/listener.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace sluice::net {

Status RemoveStaleSocket(const std::filesystem::path& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoStatus(errno, fmt::format("cannot inspect {}", path.string()));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("{} exists and is not a socket; refusing to replace it", path.string()));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  close(fd);
  if (rc == 0) {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("another process is listening on {}", path.string()));
  }
  if (err != ECONNREFUSED) {
    return ErrnoStatus(err, fmt::format("cannot probe existing socket {}", path.string()));
  }
  // Nobody accepts: the file was left by a process that died without cleaning up.
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, fmt::format("cannot remove stale socket {}", path.string()));
  }
  return Status::Ok();
}

UnixListener::UnixListener(uv_loop_t* loop, std::filesystem::path path, AcceptFn on_accept)
    : loop_(loop), path_(std::move(path)), on_accept_(std::move(on_accept)) {}

Result<std::unique_ptr<UnixListener>> UnixListener::Listen(uv_loop_t* loop,
                                                           const std::filesystem::path& path,
                                                           mode_t mode, AcceptFn on_accept) {
  if (path.native().size() >= sizeof(sockaddr_un::sun_path)) {
    return InvalidArgument(fmt::format("socket path {} is longer than {} bytes", path.string(),
                                       sizeof(sockaddr_un::sun_path) - 1));
  }
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  SLUICE_RETURN_IF_ERROR(RemoveStaleSocket(path));

  std::unique_ptr<UnixListener> listener(new UnixListener(loop, path, std::move(on_accept)));
  listener->pipe_ = new uv_pipe_t;
  uv_pipe_init(loop, listener->pipe_, 0);
  listener->pipe_->data = listener.get();
  // The umask applies to bind(); create the file with no access for others and then set `mode`, so
  // there is no window in which the socket is more open than configured.
  mode_t old_umask = umask(0177);
  int rc = uv_pipe_bind(listener->pipe_, path.c_str());
  umask(old_umask);
  // Until bind succeeds the path is not ours: Close() must not remove someone else's file.
  if (rc != 0) listener->path_.clear();
  if (rc == 0) rc = chmod(path.c_str(), mode) == 0 ? 0 : uv_translate_sys_error(errno);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener->pipe_), 128, OnConnection);
  if (rc != 0) {
    Status st = ErrnoStatus(-rc, fmt::format("cannot listen on {}", path.string()));
    listener->Close();
    return st;
  }
  return listener;
}

UnixListener::~UnixListener() { Close(); }

void UnixListener::Close() {
  if (pipe_ == nullptr) return;
  uv_close(reinterpret_cast<uv_handle_t*>(pipe_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
  pipe_ = nullptr;
  if (!path_.empty()) unlink(path_.c_str());
}

void UnixListener::OnConnection(uv_stream_t* server, int status) {
  auto* self = static_cast<UnixListener*>(server->data);
  if (status < 0) return;
  auto* client = new uv_pipe_t;
  uv_pipe_init(self->loop_, client, 0);
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(client)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(client),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    return;
  }
  self->on_accept_(client);
}

}  // namespace sluice::net
