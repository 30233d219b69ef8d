// SPDX-License-Identifier: MIT
//
// Implementation of the client library (client.h). The socket is non-blocking; every wait is a poll()
// on it with the caller's deadline, and every wait also reads, so frames the server pushes (Deliver)
// are decoded and queued while the caller waits for something else. Single-threaded, as client.h says.
#include "broker/client/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include <fmt/format.h>

namespace sluice::client {
namespace {

// The oldest answer of a queue of answers, taken out; nullopt when there is none.
template <typename T>
std::optional<T> PopFront(std::deque<T>& answers) {
  if (answers.empty()) return std::nullopt;
  T front = std::move(answers.front());
  answers.pop_front();
  return front;
}

// Output is written once this much is queued even if nobody waits, so a long run of PublishAsync
// calls streams out in large writes.
constexpr size_t kWriteThreshold = 64u << 10;
// Beyond this much queued output, queueing another frame first waits for the socket to drain.
constexpr size_t kMaxQueuedBytes = 1u << 20;
constexpr size_t kReadChunk = 64u << 10;
constexpr size_t kMaxStrayErrors = 64;

std::string_view View(const flatbuffers::String* s) {
  return s == nullptr ? std::string_view() : std::string_view(s->data(), s->size());
}

Uuid FromWire(const wire::Uuid* id) { return id == nullptr ? Uuid{} : Uuid{id->hi(), id->lo()}; }

Status ConnectError(const std::string& path, int err, std::chrono::milliseconds timeout) {
  switch (err) {
    case ENOENT:
    case ECONNREFUSED:
      return Unavailable(fmt::format("cannot connect to {}: {} (is sluiced running?)", path,
                                     std::strerror(err)));
    case EACCES:
    case EPERM:
      return Status(StatusCode::kPermissionDenied,
                    fmt::format("cannot connect to {}: {}", path, std::strerror(err)));
    case EAGAIN:
    case EINPROGRESS:
      // A blocking connect to a listener whose backlog stays full gives up after SO_SNDTIMEO.
      return Status(StatusCode::kTimeout,
                    fmt::format("cannot connect to {}: sluiced did not accept within {} ms", path,
                                timeout.count()));
    default:
      return ErrnoStatus(err, fmt::format("cannot connect to {}", path));
  }
}

StatusCode AdminStatusCode(int code) {
  switch (code) {
    case 2: return StatusCode::kInvalidArgument;
    case 3: return StatusCode::kNotFound;
    default: return StatusCode::kUnavailable;
  }
}

}  // namespace

// --- Delivery ---------------------------------------------------------------------------------------

const wire::Envelope& Delivery::envelope() const {
  return *flatbuffers::GetRoot<wire::Envelope>(storage_.get());
}

std::string_view Delivery::envelope_bytes() const {
  return {reinterpret_cast<const char*>(storage_.get()), size_};
}

Uuid Delivery::id() const { return FromWire(envelope().id()); }
uint64_t Delivery::seq() const { return envelope().seq(); }
int64_t Delivery::publish_time_us() const { return envelope().publish_time_us(); }
std::string_view Delivery::topic() const { return View(envelope().topic()); }
std::string_view Delivery::key() const { return View(envelope().key()); }
std::string_view Delivery::type() const { return View(envelope().type()); }
std::string_view Delivery::correlation_id() const { return View(envelope().correlation_id()); }
std::string_view Delivery::causation_id() const { return View(envelope().causation_id()); }

std::string_view Delivery::payload() const {
  const auto* p = envelope().payload();
  if (p == nullptr) return {};
  return {reinterpret_cast<const char*>(p->data()), p->size()};
}

std::optional<std::string_view> Delivery::header(std::string_view name) const {
  const auto* headers = envelope().headers();
  if (headers == nullptr) return std::nullopt;
  for (const wire::Header* h : *headers) {
    if (View(h->name()) == name) return View(h->value());
  }
  return std::nullopt;
}

// --- Connection: setup ------------------------------------------------------------------------------

Connection::Connection(int fd, const ConnectOptions& options)
    : fd_(fd),
      options_(options),
      send_limit_(options.max_frame_bytes),
      decoder_(options.max_frame_bytes),
      fbb_(1024) {}

Connection::~Connection() {
  if (fd_ < 0) return;
  // Best effort only: a destructor must not block.
  if (out_begin_ < out_.size()) TryWrite();
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<Connection>> Connection::Connect(const std::filesystem::path& socket,
                                                        const ConnectOptions& options) {
  if (options.max_frame_bytes < wire::kMinMaxFrameBytes ||
      options.max_frame_bytes > FLATBUFFERS_MAX_BUFFER_SIZE) {
    return InvalidArgument(fmt::format("max_frame_bytes {} is out of range ({} .. {})",
                                       options.max_frame_bytes, wire::kMinMaxFrameBytes,
                                       FLATBUFFERS_MAX_BUFFER_SIZE));
  }
  const std::string path = socket.string();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument(fmt::format(
        "cannot connect to '{}': a Unix socket path must have 1 to {} bytes", path,
        sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "cannot create a Unix socket");
  // Connect blocking, bounded by SO_SNDTIMEO: a non-blocking connect on a Unix socket fails with EAGAIN
  // on a full backlog instead of completing later, which would turn a busy server into an error.
  auto ms = std::max<int64_t>(1, options.timeout.count());
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    ::close(fd);
    return ConnectError(path, err, options.timeout);
  }
  timeval zero{};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, "cannot make the client socket non-blocking");
  }

  std::unique_ptr<Connection> conn(new Connection(fd, options));
  SLUICE_RETURN_IF_ERROR(conn->RunHello(path));
  return Result<std::unique_ptr<Connection>>(std::move(conn));
}

Result<std::unique_ptr<Connection>> Connection::FromFd(int fd, const ConnectOptions& options) {
  if (fd < 0) return InvalidArgument(fmt::format("FromFd: {} is not a file descriptor", fd));
  if (options.max_frame_bytes < wire::kMinMaxFrameBytes ||
      options.max_frame_bytes > FLATBUFFERS_MAX_BUFFER_SIZE) {
    ::close(fd);
    return InvalidArgument(fmt::format("max_frame_bytes {} is out of range ({} .. {})",
                                       options.max_frame_bytes, wire::kMinMaxFrameBytes,
                                       FLATBUFFERS_MAX_BUFFER_SIZE));
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 || ::fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, fmt::format("cannot use fd {} as a sluiced connection", fd));
  }
  std::unique_ptr<Connection> conn(new Connection(fd, options));
  SLUICE_RETURN_IF_ERROR(conn->RunHello(fmt::format("fd {}", fd)));
  return Result<std::unique_ptr<Connection>>(std::move(conn));
}

Status Connection::RunHello(const std::string& peer) {
  fbb_.Clear();
  auto name = fbb_.CreateString(options_.name);
  auto hello = wire::CreateHello(fbb_, wire::kProtocolVersion, name,
                                 static_cast<uint32_t>(options_.max_frame_bytes));
  wire::FinishFrame(fbb_, wire::Body::Hello, hello.Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Hello"));
  auto deadline = DeadlineAfter(options_.timeout);
  while (!hello_done_) {
    if (!broken_.ok()) return broken_;
    Status s = Pump(deadline, /*until_flushed=*/false);
    if (s.code() == StatusCode::kTimeout) {
      Break(Status(StatusCode::kTimeout,
                   fmt::format("no Hello from sluiced at {} within {} ms", peer,
                               options_.timeout.count())));
    }
  }
  if (server_max_frame_bytes_ != 0) send_limit_ = server_max_frame_bytes_;
  return Status::Ok();
}

Connection::Clock::time_point Connection::DeadlineAfter(std::chrono::milliseconds timeout) const {
  // A negative or absurdly long timeout waits forever (and must not overflow the clock).
  if (timeout.count() < 0 || timeout > std::chrono::hours(24 * 365)) {
    return Clock::time_point::max();
  }
  return Clock::now() + timeout;
}

// --- Connection: output -----------------------------------------------------------------------------

Status Connection::QueueBuiltFrame(const char* what) {
  size_t body = fbb_.GetSize() - wire::kLengthPrefixBytes;
  if (body > send_limit_) {
    return InvalidArgument(fmt::format("{} frame of {} bytes exceeds max_frame_bytes ({})", what,
                                       body, send_limit_));
  }
  if (out_.size() - out_begin_ >= kMaxQueuedBytes) {
    Status s = Pump(DeadlineAfter(options_.timeout), /*until_flushed=*/true);
    if (s.code() == StatusCode::kTimeout) {
      return Status(StatusCode::kTimeout,
                    fmt::format("sluiced did not read {} queued bytes within {} ms",
                                out_.size() - out_begin_, options_.timeout.count()));
    }
    SLUICE_RETURN_IF_ERROR(s);
  }
  // Invariant: the written prefix never holds more than half of out_, so the buffer stays bounded.
  if (out_begin_ > 0 && out_begin_ >= out_.size() / 2) {
    out_.erase(0, out_begin_);
    out_begin_ = 0;
  }
  out_.append(reinterpret_cast<const char*>(fbb_.GetBufferPointer()), fbb_.GetSize());
  return Status::Ok();
}

Status Connection::MaybeWrite() {
  if (out_.size() - out_begin_ >= kWriteThreshold) {
    while (out_begin_ < out_.size() && TryWrite()) {
    }
  }
  return broken_;
}

bool Connection::TryWrite() {
  ssize_t n = ::send(fd_, out_.data() + out_begin_, out_.size() - out_begin_, MSG_NOSIGNAL);
  if (n >= 0) {
    out_begin_ += static_cast<size_t>(n);
    if (out_begin_ == out_.size()) {
      out_.clear();
      out_begin_ = 0;
    }
    return true;
  }
  int err = errno;
  if (err == EINTR) return true;
  if (err == EAGAIN || err == EWOULDBLOCK) return false;
  if (err == EPIPE || err == ECONNRESET) {
    // The server closed its end. What it sent before closing (typically a fatal Error saying why) is
    // still readable, and a better diagnosis than EPIPE.
    while (broken_.ok()) ReadAndDispatch(/*until_eof=*/true);
    return false;
  }
  Break(ErrnoStatus(err, "cannot write to sluiced"));
  return false;
}

flatbuffers::Offset<wire::Envelope> Connection::BuildEnvelope(const OutMessage& message) {
  auto optional_string = [this](const std::string& s) {
    return s.empty() ? flatbuffers::Offset<flatbuffers::String>() : fbb_.CreateString(s);
  };
  auto topic = fbb_.CreateString(message.topic);
  auto key = optional_string(message.key);
  auto type = optional_string(message.type);
  auto correlation_id = optional_string(message.correlation_id);
  auto causation_id = optional_string(message.causation_id);
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Header>>> headers;
  if (!message.headers.empty()) {
    header_offsets_.clear();
    for (const auto& [name, value] : message.headers) {
      auto n = fbb_.CreateString(name);
      auto v = optional_string(value);
      header_offsets_.push_back(wire::CreateHeader(fbb_, n, v));
    }
    headers = fbb_.CreateVector(header_offsets_);
  }
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> payload;
  if (!message.payload.empty()) {
    // The payload is a FlatBuffer the consumer reads in place: align it like a root buffer.
    fbb_.ForceVectorAlignment(message.payload.size(), sizeof(uint8_t), 8);
    payload = fbb_.CreateVector(reinterpret_cast<const uint8_t*>(message.payload.data()),
                                message.payload.size());
  }
  wire::EnvelopeBuilder env(fbb_);
  if (message.id.has_value()) {
    wire::Uuid id(message.id->hi, message.id->lo);
    env.add_id(&id);
  }
  env.add_topic(topic);
  env.add_key(key);
  env.add_type(type);
  env.add_correlation_id(correlation_id);
  env.add_causation_id(causation_id);
  env.add_headers(headers);
  env.add_payload(payload);
  return env.Finish();
}

// --- Connection: input ------------------------------------------------------------------------------

Status Connection::Pump(Clock::time_point deadline, bool until_flushed) {
  for (;;) {
    while (broken_.ok() && out_begin_ < out_.size() && TryWrite()) {
    }
    if (!broken_.ok()) return broken_;
    bool want_write = out_begin_ < out_.size();
    if (until_flushed && !want_write) return Status::Ok();

    // ppoll, not poll: a deadline less than a millisecond away is kept, not rounded to a whole one.
    timespec wait{};
    const timespec* timeout = nullptr;
    if (deadline != Clock::time_point::max()) {
      const auto now = Clock::now();  // compared first: deadline - now overflows for time_point::min()
      auto left = deadline <= now ? 0 : std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
      wait.tv_sec = static_cast<time_t>(left / 1'000'000'000);
      wait.tv_nsec = static_cast<long>(left % 1'000'000'000);
      timeout = &wait;
    }
    pollfd p{fd_, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0};
    int rc = ::ppoll(&p, 1, timeout, nullptr);
    if (rc < 0) {
      if (errno == EINTR) continue;
      Break(ErrnoStatus(errno, "poll on the sluiced socket failed"));
      return broken_;
    }
    if (rc == 0) return Status(StatusCode::kTimeout, "timed out");
    if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      ReadAndDispatch(/*until_eof=*/false);
      if (!until_flushed) return broken_;
    }
  }
}

void Connection::ReadAndDispatch(bool until_eof) {
  auto tail = decoder_.WritableTail(kReadChunk);
  ssize_t n = ::recv(fd_, tail.data(), tail.size(), 0);
  if (n > 0) {
    decoder_.Commit(static_cast<size_t>(n));
    while (broken_.ok()) {
      const wire::Frame* frame = nullptr;
      Status error;
      auto outcome = decoder_.Next(&frame, &error);
      if (outcome == wire::FrameDecoder::Outcome::kNeedMore) break;
      if (outcome == wire::FrameDecoder::Outcome::kError) {
        Break(ProtocolError(fmt::format("sluiced sent a bad frame: {}", error.message())));
        break;
      }
      Dispatch(*frame);
    }
    return;
  }
  int err = n < 0 ? errno : 0;
  if (n < 0 && err == EINTR) return;
  if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
    // Only reached while draining after EPIPE: no EOF yet, but nothing more will be written either.
    if (until_eof) Break(ClosedStatus());
    return;
  }
  // EOF, or ECONNRESET once the data sent before the reset has been read.
  if (n == 0 || err == ECONNRESET) {
    Break(ClosedStatus());
    return;
  }
  Break(ErrnoStatus(err, "cannot read from sluiced"));
}

Status Connection::ClosedStatus() const {
  if (last_error_message_.empty()) return Unavailable("connection closed by sluiced");
  return Unavailable(
      fmt::format("connection closed by sluiced (last error: {})", last_error_message_));
}

void Connection::Break(Status status) {
  if (!broken_.ok()) return;
  broken_ = std::move(status);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  out_.clear();
  out_begin_ = 0;
}

void Connection::Complete(uint64_t request_id, Answer answer) {
  auto it = pending_.find(request_id);
  if (it->second == Pending::kPublishAsync) {
    --async_outstanding_;
    Result<PublishAck> r = answer.status.ok() ? Result<PublishAck>(answer.ack)
                                              : Result<PublishAck>(std::move(answer.status));
    async_done_.emplace_back(request_id, std::move(r));
  } else if (it->second == Pending::kBundle) {
    --bundles_outstanding_;
    answer.bundle.request_id = request_id;
    answer.bundle.error = std::move(answer.status);
    bundles_done_.push_back(std::move(answer.bundle));
  } else if (it->second == Pending::kRequestAsync) {
    --requests_outstanding_;
    replies_done_.push_back({request_id, std::move(answer.status), std::move(answer.reply)});
  } else {
    answers_.insert_or_assign(request_id, std::move(answer));
  }
  pending_.erase(it);
}

// Finds the pending request an answer names. Returns false for an answer nobody waits for any more
// (its call timed out), which is dropped; breaks the connection when the answer is of the wrong kind.
bool Connection::Expect(uint64_t request_id, std::initializer_list<Pending> kinds,
                        wire::Body body) {
  auto it = pending_.find(request_id);
  if (it == pending_.end()) return false;
  if (std::find(kinds.begin(), kinds.end(), it->second) == kinds.end()) {
    Break(ProtocolError(fmt::format("sluiced answered request {} with a {} frame", request_id,
                                    wire::BodyName(body))));
    return false;
  }
  return true;
}

void Connection::Dispatch(const wire::Frame& frame) {
  const wire::Body body = frame.body_type();
  if (!hello_done_ && body != wire::Body::Hello && body != wire::Body::Error) {
    Break(ProtocolError(
        fmt::format("sluiced sent a {} frame before its Hello", wire::BodyName(body))));
    return;
  }
  switch (body) {
    case wire::Body::Hello: {
      if (hello_done_) {
        Break(ProtocolError("sluiced sent Hello twice"));
        return;
      }
      const auto* hello = frame.body_as_Hello();
      server_protocol_version_ = hello->protocol_version();
      server_max_frame_bytes_ = hello->max_frame_bytes();
      server_version_ = std::string(View(hello->server_version()));
      hello_done_ = true;
      return;
    }
    case wire::Body::PublishAck: {
      const auto* ack = frame.body_as_PublishAck();
      uint64_t id = ack->request_id();
      if (!Expect(id, {Pending::kPublish, Pending::kPublishAsync}, body)) return;
      Answer a;
      a.ack = PublishAck{id, ack->seq(), FromWire(ack->id()), ack->duplicate()};
      Complete(id, std::move(a));
      return;
    }
    case wire::Body::SubscribeOk: {
      const auto* ok = frame.body_as_SubscribeOk();
      if (!Expect(ok->request_id(), {Pending::kSubscribe}, body)) return;
      Answer a;
      a.consumer_id = ok->consumer_id();
      Complete(ok->request_id(), std::move(a));
      return;
    }
    case wire::Body::Deliver: {
      const auto* d = frame.body_as_Deliver();
      Delivery delivery;
      delivery.consumer_id = d->consumer_id();
      delivery.delivery_id = d->delivery_id();
      delivery.delivery_count = d->delivery_count();
      delivery.reply_token = d->reply_token();
      // The decoder verified the nested envelope; a copy keeps it valid past the next read.
      const auto* env = d->envelope();
      delivery.size_ = env->size();
      delivery.storage_.reset(new uint64_t[(env->size() + 7) / 8]);
      std::memcpy(delivery.storage_.get(), env->data(), env->size());
      deliveries_.push_back(std::move(delivery));
      return;
    }
    case wire::Body::Reply: {
      const auto* reply = frame.body_as_Reply();
      if (!Expect(reply->request_id(), {Pending::kRequest, Pending::kRequestAsync}, body)) return;
      Answer a;
      ReplyMessage& m = a.reply;
      m.error = std::string(View(reply->error()));
      if (const auto* env = reply->envelope(); env != nullptr) {
        m.topic = std::string(View(env->topic()));
        m.key = std::string(View(env->key()));
        m.type = std::string(View(env->type()));
        m.correlation_id = std::string(View(env->correlation_id()));
        m.causation_id = std::string(View(env->causation_id()));
        if (const auto* headers = env->headers(); headers != nullptr) {
          for (const wire::Header* h : *headers) {
            m.headers.emplace_back(View(h->name()), View(h->value()));
          }
        }
        if (const auto* p = env->payload(); p != nullptr) {
          m.payload.assign(reinterpret_cast<const char*>(p->data()), p->size());
        }
        m.id = FromWire(env->id());
        m.seq = env->seq();
        m.publish_time_us = env->publish_time_us();
      }
      Complete(reply->request_id(), std::move(a));
      return;
    }
    case wire::Body::BundleAck: {
      const auto* ack = frame.body_as_BundleAck();
      if (!Expect(ack->request_id(), {Pending::kBundle}, body)) return;
      Answer a;
      a.bundle.status = ack->status();
      a.bundle.message = std::string(View(ack->message()));
      Complete(ack->request_id(), std::move(a));
      return;
    }
    case wire::Body::AdminResponse: {
      const auto* resp = frame.body_as_AdminResponse();
      if (!Expect(resp->request_id(), {Pending::kAdmin}, body)) return;
      Answer a;
      a.admin.code = resp->code();
      a.admin.message = std::string(View(resp->message()));
      a.admin.result_json = std::string(View(resp->result_json()));
      Complete(resp->request_id(), std::move(a));
      return;
    }
    case wire::Body::Error: {
      const auto* e = frame.body_as_Error();
      std::string message(View(e->message()));
      if (message.empty()) {
        message = fmt::format("sluiced reported error {}", wire::EnumNameErrorCode(e->code()));
      }
      Status status = wire::StatusFor(e->code(), message);
      if (status.ok()) status = Internal(message);  // an Error frame with code Ok is still an error
      // Before Hello every Error is the answer to Hello: the server closes after it.
      if (!hello_done_ || e->fatal()) {
        Break(std::move(status));
        return;
      }
      last_error_message_ = message;
      uint64_t id = e->request_id();
      if (id != 0 && pending_.count(id) != 0) {
        Answer a;
        a.status = std::move(status);
        Complete(id, std::move(a));
        return;
      }
      stray_errors_.push_back(std::move(status));
      if (stray_errors_.size() > kMaxStrayErrors) stray_errors_.pop_front();
      return;
    }
    default:
      Break(ProtocolError(fmt::format("sluiced sent a {} frame, which only clients send",
                                      wire::BodyName(body))));
      return;
  }
}

// --- Connection: calls ------------------------------------------------------------------------------

Result<Connection::Answer> Connection::Call(uint64_t request_id, Pending kind,
                                            Clock::time_point deadline, std::string_view answer,
                                            std::chrono::milliseconds timeout) {
  pending_.emplace(request_id, kind);
  for (;;) {
    if (auto it = answers_.find(request_id); it != answers_.end()) {
      Answer a = std::move(it->second);
      answers_.erase(it);
      if (!a.status.ok()) return a.status;
      return a;
    }
    if (!broken_.ok()) {
      pending_.erase(request_id);
      return broken_;
    }
    Status s = Pump(deadline, /*until_flushed=*/false);
    if (s.code() == StatusCode::kTimeout) {
      // A late answer finds no pending entry and is dropped.
      pending_.erase(request_id);
      return Status(StatusCode::kTimeout,
                    fmt::format("no {} from sluiced for request {} within {} ms", answer,
                                request_id, timeout.count()));
    }
  }
}

Result<PublishAck> Connection::Publish(const OutMessage& message) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  fbb_.Clear();
  auto env = BuildEnvelope(message);
  wire::FinishFrame(fbb_, wire::Body::Publish, wire::CreatePublish(fbb_, id, env).Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Publish"));
  auto r = Call(id, Pending::kPublish, DeadlineAfter(options_.timeout), "PublishAck",
                options_.timeout);
  if (!r.ok()) return r.status();
  return r->ack;
}

Result<uint64_t> Connection::PublishAsync(const OutMessage& message) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  fbb_.Clear();
  auto env = BuildEnvelope(message);
  wire::FinishFrame(fbb_, wire::Body::Publish, wire::CreatePublish(fbb_, id, env).Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Publish"));
  pending_.emplace(id, Pending::kPublishAsync);
  ++async_outstanding_;
  // The frame is queued and will go out; a failure now is the connection's, reported by later calls.
  (void)MaybeWrite();
  return id;
}

Result<PublishAck> Connection::WaitPublishAck(std::chrono::milliseconds timeout) {
  auto deadline = DeadlineAfter(timeout);
  for (;;) {
    if (!async_done_.empty()) {
      auto [id, result] = std::move(async_done_.front());
      async_done_.pop_front();
      last_async_request_id_ = id;
      return std::move(result);
    }
    if (!broken_.ok()) return broken_;
    if (async_outstanding_ == 0) {
      return InvalidArgument("WaitPublishAck: no asynchronous publish is outstanding");
    }
    Status s = Pump(deadline, /*until_flushed=*/false);
    if (s.code() == StatusCode::kTimeout) {
      return Status(StatusCode::kTimeout,
                    fmt::format("no PublishAck from sluiced within {} ms ({} publishes outstanding)",
                                timeout.count(), async_outstanding_));
    }
  }
}

Result<uint64_t> Connection::Subscribe(const SubscribeOptions& options) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  fbb_.Clear();
  auto topic = fbb_.CreateString(options.topic);
  auto subscription = fbb_.CreateString(options.subscription);
  auto types = options.types.empty() ? 0 : fbb_.CreateVectorOfStrings(options.types);
  auto sub = wire::CreateSubscribe(fbb_, id, topic, subscription, options.start, options.start_seq,
                                   options.start_time_us, options.ordering, options.max_deliveries,
                                   options.ack_wait_ms, options.credit, options.max_crashes, types);
  wire::FinishFrame(fbb_, wire::Body::Subscribe, sub.Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Subscribe"));
  auto r = Call(id, Pending::kSubscribe, DeadlineAfter(options_.timeout), "SubscribeOk",
                options_.timeout);
  if (!r.ok()) return r.status();
  return r->consumer_id;
}

Result<Delivery> Connection::Receive(std::chrono::milliseconds timeout) {
  auto deadline = DeadlineAfter(timeout);
  for (;;) {
    if (!deliveries_.empty()) {
      Delivery d = std::move(deliveries_.front());
      deliveries_.pop_front();
      return d;
    }
    if (!broken_.ok()) return broken_;
    Status s = Pump(deadline, /*until_flushed=*/false);
    if (s.code() == StatusCode::kTimeout) {
      return Status(StatusCode::kTimeout,
                    fmt::format("no delivery within {} ms", timeout.count()));
    }
  }
}

Status Connection::Ack(uint64_t consumer_id, std::span<const uint64_t> delivery_ids) {
  if (!broken_.ok()) return broken_;
  if (delivery_ids.empty()) return Status::Ok();
  fbb_.Clear();
  auto ids = fbb_.CreateVector(delivery_ids.data(), delivery_ids.size());
  wire::FinishFrame(fbb_, wire::Body::Ack, wire::CreateAck(fbb_, consumer_id, ids).Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Ack"));
  return MaybeWrite();
}

Status Connection::Nack(uint64_t consumer_id, uint64_t delivery_id, uint32_t delay_ms, bool reject,
                        std::string_view error) {
  if (!broken_.ok()) return broken_;
  fbb_.Clear();
  auto err = error.empty() ? flatbuffers::Offset<flatbuffers::String>()
                           : fbb_.CreateString(error.data(), error.size());
  auto nack = wire::CreateNack(fbb_, consumer_id, delivery_id, delay_ms, reject, err);
  wire::FinishFrame(fbb_, wire::Body::Nack, nack.Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Nack"));
  return MaybeWrite();
}

Status Connection::AddCredit(uint64_t consumer_id, uint32_t credit) {
  if (!broken_.ok()) return broken_;
  fbb_.Clear();
  wire::FinishFrame(fbb_, wire::Body::Credit,
                    wire::CreateCredit(fbb_, consumer_id, credit).Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Credit"));
  return MaybeWrite();
}

Status Connection::QueueRequest(uint64_t request_id, const OutMessage& message, std::chrono::milliseconds timeout) {
  fbb_.Clear();
  auto env = BuildEnvelope(message);
  auto timeout_ms = static_cast<uint32_t>(std::clamp<int64_t>(timeout.count(), 0, UINT32_MAX));
  wire::FinishFrame(fbb_, wire::Body::Request,
                    wire::CreateRequest(fbb_, request_id, env, timeout_ms).Union());
  return QueueBuiltFrame("Request");
}

Result<ReplyMessage> Connection::Request(const OutMessage& message,
                                         std::chrono::milliseconds timeout) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  SLUICE_RETURN_IF_ERROR(QueueRequest(id, message, timeout));
  auto r = Call(id, Pending::kRequest, DeadlineAfter(timeout + kRequestTimeoutGrace), "Reply",
                timeout + kRequestTimeoutGrace);
  if (!r.ok()) return r.status();
  return std::move(r->reply);
}

Result<uint64_t> Connection::RequestAsync(const OutMessage& message, std::chrono::milliseconds timeout) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  SLUICE_RETURN_IF_ERROR(QueueRequest(id, message, timeout));
  pending_.emplace(id, Pending::kRequestAsync);
  ++requests_outstanding_;
  (void)MaybeWrite();  // a broken connection shows in the next Poll, as for PublishAsync
  return id;
}

std::optional<RequestAnswer> Connection::TakeReply() { return PopFront(replies_done_); }

Status Connection::Reply(uint64_t reply_token, const OutMessage& reply, std::string_view error) {
  if (!broken_.ok()) return broken_;
  fbb_.Clear();
  auto env = BuildEnvelope(reply);
  auto err = error.empty() ? flatbuffers::Offset<flatbuffers::String>()
                           : fbb_.CreateString(error.data(), error.size());
  wire::FinishFrame(fbb_, wire::Body::Reply,
                    wire::CreateReply(fbb_, 0, reply_token, env, err).Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Reply"));
  return MaybeWrite();
}

Result<uint64_t> Connection::BundleAsync(const BundleMessage& bundle) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  fbb_.Clear();
  auto bytes = [this](std::string_view s) {
    return fbb_.CreateVector(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  std::vector<flatbuffers::Offset<wire::KvRead>> reads;
  reads.reserve(bundle.reads.size());
  for (const KvReadRecord& r : bundle.reads) reads.push_back(wire::CreateKvRead(fbb_, bytes(r.key), r.version));
  std::vector<flatbuffers::Offset<wire::KvWrite>> writes;
  writes.reserve(bundle.writes.size());
  for (const KvWriteRecord& w : bundle.writes) {
    auto key = bytes(w.key);
    auto value = w.erase ? flatbuffers::Offset<flatbuffers::Vector<uint8_t>>() : bytes(w.value);
    writes.push_back(wire::CreateKvWrite(fbb_, key, value, w.erase));
  }
  std::vector<flatbuffers::Offset<wire::Envelope>> publishes;
  publishes.reserve(bundle.publishes.size());
  for (const OutMessage& m : bundle.publishes) publishes.push_back(BuildEnvelope(m));
  flatbuffers::Offset<wire::Envelope> reply;
  if (bundle.reply.has_value()) reply = BuildEnvelope(*bundle.reply);
  auto reply_error = bundle.reply_error.empty() ? flatbuffers::Offset<flatbuffers::String>()
                                                : fbb_.CreateString(bundle.reply_error);
  auto b = wire::CreateBundle(fbb_, id, bundle.consumer_id, bundle.delivery_id, bundle.version,
                              reads.empty() ? 0 : fbb_.CreateVector(reads),
                              writes.empty() ? 0 : fbb_.CreateVector(writes),
                              publishes.empty() ? 0 : fbb_.CreateVector(publishes), reply, reply_error,
                              bundle.reply_token);
  wire::FinishFrame(fbb_, wire::Body::Bundle, b.Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("Bundle"));
  pending_.emplace(id, Pending::kBundle);
  ++bundles_outstanding_;
  (void)MaybeWrite();
  return id;
}

std::optional<BundleAck> Connection::TakeBundleAck() { return PopFront(bundles_done_); }

Status Connection::Poll(std::chrono::milliseconds timeout) {
  if (!broken_.ok()) return broken_;
  return Pump(DeadlineAfter(timeout), /*until_flushed=*/false);
}

Status Connection::PollUntil(Clock::time_point deadline) {
  if (!broken_.ok()) return broken_;
  return Pump(deadline, /*until_flushed=*/false);
}

Result<nlohmann::json> Connection::Admin(std::string_view command, const nlohmann::json& args,
                                         std::chrono::milliseconds timeout) {
  if (!broken_.ok()) return broken_;
  uint64_t id = NextRequestId();
  // Replacing invalid UTF-8 keeps dump() from throwing on arguments taken from a command line.
  std::string args_json = args.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  fbb_.Clear();
  auto cmd = fbb_.CreateString(command.data(), command.size());
  auto a = fbb_.CreateString(args_json);
  wire::FinishFrame(fbb_, wire::Body::AdminRequest,
                    wire::CreateAdminRequest(fbb_, id, cmd, a).Union());
  SLUICE_RETURN_IF_ERROR(QueueBuiltFrame("AdminRequest"));
  auto r = Call(id, Pending::kAdmin, DeadlineAfter(timeout), "AdminResponse", timeout);
  if (!r.ok()) return r.status();
  const AdminAnswer& answer = r->admin;
  if (answer.code != 0) {
    std::string message = answer.message.empty()
                              ? fmt::format("admin command '{}' failed with code {}", command,
                                            answer.code)
                              : answer.message;
    return Status(AdminStatusCode(answer.code), std::move(message));
  }
  if (answer.result_json.empty()) return nlohmann::json::object();
  auto result = nlohmann::json::parse(answer.result_json, nullptr, /*allow_exceptions=*/false);
  if (result.is_discarded()) {
    return ProtocolError(
        fmt::format("sluiced answered admin command '{}' with a result that is not JSON", command));
  }
  return result;
}

std::optional<Status> Connection::TakeError() {
  if (stray_errors_.empty()) return std::nullopt;
  Status s = std::move(stray_errors_.front());
  stray_errors_.pop_front();
  return s;
}

Status Connection::SendRaw(std::string_view bytes) {
  if (!broken_.ok()) return broken_;
  out_.append(bytes);
  return Flush();
}

Status Connection::WriteQueued() {
  while (broken_.ok() && out_begin_ < out_.size() && TryWrite()) {
  }
  return broken_;
}

Status Connection::Flush() {
  if (!broken_.ok()) return broken_;
  Status s = Pump(DeadlineAfter(options_.timeout), /*until_flushed=*/true);
  if (s.code() == StatusCode::kTimeout) {
    return Status(StatusCode::kTimeout,
                  fmt::format("sluiced did not read {} queued bytes within {} ms",
                              out_.size() - out_begin_, options_.timeout.count()));
  }
  return s;
}

Status Connection::Close() {
  if (!broken_.ok()) return Status::Ok();
  Status s = Flush();
  Break(Unavailable("connection closed by the client"));
  return s;
}

}  // namespace sluice::client
