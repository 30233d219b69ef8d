// SPDX-License-Identifier: MIT
//
// LockFile: proof that this process owns a data directory. An exclusive flock(2) on
// `<data_dir>/sluiced.lock`, which holds the owner's pid for the error message another daemon prints.
// The kernel drops the lock when the process dies, so a crash never leaves a stale lock behind.
#pragma once

#include <filesystem>
#include <memory>

#include "broker/status.h"

namespace sluice {

class LockFile {
 public:
  // Fails with kAlreadyExists naming the directory and the pid that holds it.
  static Result<std::unique_ptr<LockFile>> Acquire(const std::filesystem::path& data_dir);
  ~LockFile();  // removes the file and releases the lock
  LockFile(const LockFile&) = delete;
  LockFile& operator=(const LockFile&) = delete;

 private:
  LockFile(std::filesystem::path path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::filesystem::path path_;
  int fd_;
};

}  // namespace sluice
