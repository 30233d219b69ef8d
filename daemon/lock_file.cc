// SPDX-License-Identifier: MIT
#include "daemon/lock_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include <fmt/format.h>

namespace sluice {

Result<std::unique_ptr<LockFile>> LockFile::Acquire(const std::filesystem::path& data_dir) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) {
    return Status(StatusCode::kIoError,
                  fmt::format("cannot create data directory {}: {}", data_dir.string(), ec.message()));
  }
  auto path = data_dir / "sluiced.lock";
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, fmt::format("cannot open lock file {}", path.string()));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char buf[32] = {};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    if (err == EWOULDBLOCK) {
      std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "unknown";
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      return Status(StatusCode::kAlreadyExists,
                    fmt::format("data directory {} is in use by another sluiced (pid {})",
                                data_dir.string(), pid));
    }
    return ErrnoStatus(err, fmt::format("cannot lock {}", path.string()));
  }
  std::string pid = fmt::format("{}\n", getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, fmt::format("cannot write lock file {}", path.string()));
  }
  return std::unique_ptr<LockFile>(new LockFile(path, fd));
}

LockFile::~LockFile() {
  // Unlink before unlocking, so a daemon that starts right now never locks a file we then remove.
  unlink(path_.c_str());
  close(fd_);
}

}  // namespace sluice
