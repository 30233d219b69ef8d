// SPDX-License-Identifier: MIT
//
// Status and Result<T>: how every sluice library function reports failure. A Status is either OK or a
// code plus a message written for the operator ("topic 'orders' is full: max_messages = 1000"). Result<T>
// holds a T or a non-OK Status. Both are [[nodiscard]] values, cheap to move, and thread-compatible.
// Foreign error codes (errno, LMDB, libuv) are mapped to a Status in exactly one place each.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace sluice {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,   // the caller's input is wrong; retrying the same input fails again
  kNotFound,
  kAlreadyExists,
  kLimitExceeded,     // a configured limit was reached: backpressure, retry later
  kStorageFull,       // the LMDB map or the disk is full
  kUnavailable,       // the peer or the daemon is not there (yet)
  kPermissionDenied,
  kTimeout,
  kProtocol,          // the peer broke the wire protocol
  kCorruption,        // stored data failed a check
  kIoError,
  kConflict,          // an optimistic check failed (a raced bundle); run again
  kInternal,
  kCodeCount,         // sentinel
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "not found: no subscription 'x'"; "ok" for OK.
  std::string ToString() const;

  // Returns this status with `context: ` put before the message, to add where it happened.
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status LimitExceeded(std::string m) { return {StatusCode::kLimitExceeded, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status ProtocolError(std::string m) { return {StatusCode::kProtocol, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Maps an errno value to a Status whose message is "`what`: strerror(err)".
Status ErrnoStatus(int err, std::string_view what);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design, as absl::StatusOr
  Result(Status status) : status_(std::move(status)) { assert(!status_.ok()); }  // NOLINT

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace sluice

// Returns early from the enclosing function when `expr` yields a non-OK Status.
#define SLUICE_RETURN_IF_ERROR(expr)        \
  do {                                      \
    ::sluice::Status sluice_status_ = (expr); \
    if (!sluice_status_.ok()) return sluice_status_; \
  } while (0)
