// SPDX-License-Identifier: MIT
//
// The notification plugin: mails the customer. OrderCreated brings "Thank you for your order",
// OrderCancelled a cancellation, OrderConfirmed a confirmation when `send_confirmation = true`. With an
// [smtp] table in its config it sends through that relay with libcurl; without one it writes each mail
// as an RFC 5322 file into a Maildir (<data_dir>/Maildir, or `maildir`), so the demo needs no server.
//
// A mail is an outside effect, so it is at-least-once: a worker that dies after sending but before its
// ack commits sends again on redelivery. Each mail is named by the event id — Message-ID
// <event-id@sluice>, Maildir file "<seconds>.<event-id>.sluice" — so a resend carries the same
// Message-ID, and a Maildir resend finds its file in new/ and is discarded.
//
// Failures: SMTP unreachable, a timeout, a 4xx, or a 5xx that is not about the recipient or the
// message (MAIL FROM, AUTH: a relay or config problem) is a retry with exponential backoff
// (retry_base_ms doubling per delivery up to retry_max_ms); an invalid recipient (bad syntax, 5xx to
// RCPT TO or to the message data) is a reject: dead-lettered with the server's answer. A Maildir write
// error is a retry.
//
// Maildir delivery: a mail is written whole into a file that no reader sees, then linked into new/.
// The file is an unnamed O_TMPFILE inode in tmp/ (named through /proc/self/fd when it is linked), or,
// where the file system has no O_TMPFILE (or /proc is missing), and for mails past kMaxOpenMails
// waiting for one Sync, tmp/<name>.<pid>, linked and then unlinked. The link fails
// when new/ has the name already: that is a resend, and the first mail stays. Compared with a named tmp/
// file renamed into new/, this saves a directory entry in tmp/, its removal, and a stat of new/ per
// mail: a third of the plugin's CPU in the order pipeline. A crash before the link leaves nothing
// behind; O_TMPFILE inodes vanish with the process.
//
// Maildir durability (`maildir_fsync`, default on): Handle only writes the mail; Sync, which the host
// calls before it acks any of the messages handled since the last Sync, makes all of them durable at
// once (one syncfs of the Maildir's file system), drops the O_TMPFILE mails' pages from the page
// cache, links them into new/ and fsyncs new/. So a burst of N mails costs two syncs instead of 2N, and
// an acked mail is always on disk. syncfs reports writeback errors since Linux 5.8 (Debian 12 ships
// 6.1). A failed Sync retries every message it covered with the subscription's backoff (the worker
// nacks them), not retry_base_ms.
//
// Threading: the host calls Init, Handle and Sync on one thread, one at a time (plugin.h); a send blocks
// the handler for at most the configured SMTP timeout.
#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "orders_generated.h"
#include "pipeline.h"
#include "sluice/plugin.hpp"

namespace sluice::notification_plugin {
namespace {

namespace sdk = ::sluice::sdk;
namespace pl = ::sluice::pipeline;
using nlohmann::json;

constexpr size_t kMaxBodyLine = 900;  // RFC 5322 allows 998 octets per line

struct Line {
  std::string sku;
  int64_t quantity = 0;
  int64_t unit_price_cents = 0;
};

// One mail, before it is rendered for a Maildir (LF) or SMTP (CRLF).
struct Mail {
  std::string to;
  std::string subject;
  std::string order_id;
  std::string kind;  // X-Sluice-Mail: order-created, order-cancelled, order-confirmed
  std::vector<std::string> body;
};

std::vector<Line> Lines(const flatbuffers::Vector<flatbuffers::Offset<orders::LineItem>>* items) {
  std::vector<Line> out;
  if (items == nullptr) return out;
  for (const auto* item : *items) {
    out.push_back({pl::Str(item->sku()), item->quantity(), item->unit_price_cents().value_or(0)});
  }
  return out;
}

// Body text from event fields: no control characters (a CR or LF would end the line, or the header
// block), and no line past the RFC 5322 limit.
std::string Clean(std::string_view s) {
  std::string out;
  out.reserve(std::min(s.size(), kMaxBodyLine));
  for (char c : s) {
    if (out.size() >= kMaxBodyLine) break;
    auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  return out;
}

void AddItems(std::vector<std::string>& body, const std::vector<Line>& lines, int64_t total_cents) {
  for (const Line& l : lines) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "  %-24s %7lld x %10s = %12s", l.sku.c_str(),
                  static_cast<long long>(l.quantity), pl::FormatCents(l.unit_price_cents).c_str(),
                  pl::FormatCents(l.quantity * l.unit_price_cents).c_str());
    body.emplace_back(buf);
  }
  body.emplace_back("");
  char buf[80];
  std::snprintf(buf, sizeof(buf), "  %-24s %35s", "Total", pl::FormatCents(total_cents).c_str());
  body.emplace_back(buf);
}

// "Tue, 01 Jul 2025 12:00:00 +0000", whatever the process locale.
std::string RfcDate(int64_t unix_us) {
  static const char* const kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t secs = static_cast<time_t>(unix_us / 1'000'000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[tm.tm_wday % 7], tm.tm_mday,
                kMonths[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

struct SmtpSettings {
  std::string host;
  int64_t port = 25;
  bool starttls = false;
  std::string username;
  std::string password;
  std::string ca_file;
  int64_t timeout_ms = 15'000;
  int64_t connect_timeout_ms = 5'000;
};

// One libcurl easy handle, kept between sends so the relay connection can be reused.
class SmtpSender {
 public:
  enum class Verdict { kSent, kRetry, kReject };

  explicit SmtpSender(SmtpSettings settings) : settings_(std::move(settings)) {}
  ~SmtpSender() {
    if (curl_ != nullptr) curl_easy_cleanup(curl_);
  }
  SmtpSender(const SmtpSender&) = delete;
  SmtpSender& operator=(const SmtpSender&) = delete;

  Verdict Send(const std::string& from, const std::string& to, const std::string& message,
               std::string* detail) {
    if (curl_ == nullptr) curl_ = curl_easy_init();
    if (curl_ == nullptr) {
      *detail = "curl_easy_init failed";
      return Verdict::kRetry;
    }
    std::string host =
        settings_.host.find(':') != std::string::npos ? "[" + settings_.host + "]" : settings_.host;
    std::string url = "smtp://" + host + ":" + std::to_string(settings_.port);
    std::string mail_from = "<" + from + ">";
    std::string rcpt = "<" + to + ">";
    curl_slist* rcpts = curl_slist_append(nullptr, rcpt.c_str());
    Upload upload{&message, 0};
    char errbuf[CURL_ERROR_SIZE] = {0};

    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "smtp");
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl_, CURLOPT_MAIL_FROM, mail_from.c_str());
    curl_easy_setopt(curl_, CURLOPT_MAIL_RCPT, rcpts);
    curl_easy_setopt(curl_, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl_, CURLOPT_READFUNCTION, &SmtpSender::Read);
    curl_easy_setopt(curl_, CURLOPT_READDATA, &upload);
    curl_easy_setopt(curl_, CURLOPT_USE_SSL,
                     static_cast<long>(settings_.starttls ? CURLUSESSL_ALL : CURLUSESSL_NONE));
    if (!settings_.ca_file.empty()) curl_easy_setopt(curl_, CURLOPT_CAINFO, settings_.ca_file.c_str());
    if (!settings_.username.empty()) {
      curl_easy_setopt(curl_, CURLOPT_USERNAME, settings_.username.c_str());
      curl_easy_setopt(curl_, CURLOPT_PASSWORD, settings_.password.c_str());
    }
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, static_cast<long>(settings_.timeout_ms));
    curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(settings_.connect_timeout_ms));

    CURLcode rc = curl_easy_perform(curl_);
    long code = 0;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &code);
    // The handle outlives this call: drop every pointer into this frame.
    curl_easy_setopt(curl_, CURLOPT_MAIL_RCPT, nullptr);
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, nullptr);
    curl_easy_setopt(curl_, CURLOPT_READDATA, nullptr);
    curl_slist_free_all(rcpts);
    if (rc == CURLE_OK) return Verdict::kSent;

    std::string_view err(errbuf);
    *detail = std::string(curl_easy_strerror(rc));
    if (!err.empty()) *detail += ": " + std::string(err);
    if (code != 0) *detail += " (SMTP " + std::to_string(code) + ")";
    // libcurl names the failing step ("RCPT failed: 550"). A permanent refusal of the recipient or of
    // this message will not change on a resend; anything else (MAIL FROM, AUTH, 4xx, the network) is
    // the relay's or the config's problem and may.
    bool permanent = code >= 500 && code < 600;
    bool about_this_mail =
        err.rfind("RCPT", 0) == 0 || err.rfind("DATA", 0) == 0 || rc == CURLE_WEIRD_SERVER_REPLY;
    return permanent && about_this_mail ? Verdict::kReject : Verdict::kRetry;
  }

 private:
  struct Upload {
    const std::string* data;
    size_t offset;
  };

  static size_t Read(char* buffer, size_t size, size_t nitems, void* user) {
    auto* up = static_cast<Upload*>(user);
    size_t room = size * nitems;
    size_t left = up->data->size() - up->offset;
    size_t n = std::min(room, left);
    std::memcpy(buffer, up->data->data() + up->offset, n);
    up->offset += n;
    return n;
  }

  SmtpSettings settings_;
  CURL* curl_ = nullptr;
};

int MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return 0;
  return -errno;
}

// A worker that died between writing a named mail and Sync left it under tmp/ (its redelivery writes a
// new one under another pid). Maildir readers ignore tmp/; this removes what is older than any write in
// progress can be. Returns how many it removed.
constexpr int64_t kStaleTmpSeconds = 3600;

int RemoveStaleTmp(const std::string& tmp_dir, int64_t now_seconds) {
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(tmp_dir, ec)) {
    struct stat st {};
    if (lstat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (now_seconds - st.st_mtime < kStaleTmpSeconds) continue;
    if (unlink(entry.path().c_str()) == 0) ++removed;
  }
  return removed;
}

// Maildir wants tmp/ names that no other writer uses: two instances may hold the same event at once
// (a lease that expired), and must not write into one file.
std::string TmpSuffix() { return "." + std::to_string(getpid()); }

std::string ProcFdPath(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

// Whether mails in `dir` can be written as O_TMPFILE inodes and linked by their /proc/self/fd path:
// the file system must support O_TMPFILE and /proc must be mounted.
bool TmpfileLinkWorks(const std::string& dir) {
  int fd = open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  const std::string probe = dir + "/.probe" + TmpSuffix();
  unlink(probe.c_str());
  bool linked = linkat(AT_FDCWD, ProcFdPath(fd).c_str(), AT_FDCWD, probe.c_str(), AT_SYMLINK_FOLLOW) == 0;
  if (linked) unlink(probe.c_str());
  close(fd);
  return linked;
}

int WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

class NotificationPlugin final : public sdk::Plugin {
 public:
  ~NotificationPlugin() override {
    for (PendingMail& p : pending_) Discard(&p);
    smtp_.reset();
    if (curl_initialized_) curl_global_cleanup();
  }
  int Init(const sdk::InitInfo& info) override;
  sdk::Result Handle(const sdk::Message& m, sdk::Context& ctx) override;
  // plugin.h's sync(): the mails written since the last call reach new/, durably.
  int Sync();

 private:
  int InitSmtp(const sdk::InitInfo& info, const json& smtp);
  std::string Render(const Mail& mail, const sdk::Message& m, int64_t date_us, const char* eol) const;
  sdk::Result Deliver(const Mail& mail, const sdk::Message& m, sdk::Context& ctx);
  sdk::Result WriteMaildir(const Mail& mail, const sdk::Message& m, sdk::Context& ctx);
  sdk::Result Backoff(const sdk::Message& m, const std::string& why) const;

  // A mail written in full but not yet in new/.
  struct PendingMail {
    std::string name;  // its name in new/
    int fd = -1;       // the unnamed O_TMPFILE inode, or -1: the file tmp/<name><TmpSuffix()>
  };
  // Writes `message` into a file no reader sees; 0 or -errno (then nothing is left behind).
  int CreateMail(PendingMail* p, std::string_view message);
  // Links the mail into new/ and lets go of its file; 0 also when new/ has it already (a resend).
  int LinkIntoNew(PendingMail* p);
  void Discard(PendingMail* p);
  // The named file of a mail written without O_TMPFILE.
  std::string TmpPath(const PendingMail& p) const { return maildir_ + "/tmp/" + p.name + TmpSuffix(); }

  bool send_confirmation_ = false;
  std::string from_ = "orders@example.com";
  std::string from_name_ = "sluice shop";
  std::string maildir_;
  bool maildir_fsync_ = true;
  int64_t retry_base_ms_ = 1'000;
  int64_t retry_max_ms_ = 300'000;
  std::unique_ptr<SmtpSender> smtp_;
  bool curl_initialized_ = false;
  // The mails Sync makes durable and links into new/, and their names: a lookup per mail in a run of
  // up to 256 was a tenth of the worker's CPU as a scan of pending_.
  std::vector<PendingMail> pending_;
  std::unordered_set<std::string> pending_names_;
  bool use_tmpfile_ = false;
  // O_TMPFILE inodes held open in pending_: past the cap, mails are named files under tmp/, so that a
  // long run before Sync cannot exhaust the worker's file descriptors (a soft limit of 1024).
  size_t open_mails_ = 0;
  static constexpr size_t kMaxOpenMails = 512;
  const sluice_host_api* api_ = nullptr;
};

int NotificationPlugin::Init(const sdk::InitInfo& info) {
  const json& config = info.config;
  if (!config.is_object()) {
    info.Log(SLUICE_LOG_ERROR, "config must be a table");
    return -EINVAL;
  }
  auto fail = [&](const std::string& message) {
    info.Log(SLUICE_LOG_ERROR, "config." + message);
    return -EINVAL;
  };
  for (const auto& [key, value] : config.items()) {
    if (key == "send_confirmation") {
      if (!value.is_boolean()) return fail("send_confirmation must be true or false");
      send_confirmation_ = value.get<bool>();
    } else if (key == "from") {
      if (!value.is_string()) return fail("from must be an address");
      from_ = value.get<std::string>();
    } else if (key == "from_name") {
      if (!value.is_string()) return fail("from_name must be a string");
      from_name_ = value.get<std::string>();
    } else if (key == "maildir") {
      if (!value.is_string() || value.get<std::string>().empty()) return fail("maildir must be a path");
      maildir_ = value.get<std::string>();
    } else if (key == "maildir_fsync") {
      if (!value.is_boolean()) return fail("maildir_fsync must be true or false");
      maildir_fsync_ = value.get<bool>();
    } else if (key == "retry_base_ms" || key == "retry_max_ms") {
      auto ms = pl::IntIn(value, 1, 86'400'000);
      if (!ms) return fail(key + " must be 1 to 86400000");
      (key == "retry_base_ms" ? retry_base_ms_ : retry_max_ms_) = *ms;
    } else if (key != "smtp") {
      info.Log(SLUICE_LOG_WARNING, "config: unknown key '" + key + "' ignored");
    }
  }
  if (auto it = config.find("smtp"); it != config.end()) {
    if (int rc = InitSmtp(info, *it); rc != 0) return rc;
  }
  if (std::string why = pl::CheckEmail(from_); !why.empty()) return fail("from: " + why);
  // The display name goes into the From header verbatim, inside quotes.
  for (char c : from_name_) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f || c == '"' || c == '\\') {
      return fail("from_name must be printable ASCII without '\"' or '\\'");
    }
  }
  // Only the events this configuration mails about wake the plugin (kSubscriptions[0]).
  std::vector<std::string> mailed{std::string(pl::kOrderCreated), std::string(pl::kOrderCancelled)};
  if (send_confirmation_) mailed.emplace_back(pl::kOrderConfirmed);
  pl::DeliverOnly(info, 0, mailed);
  if (smtp_ != nullptr) {
    info.Log(SLUICE_LOG_INFO, "sending mail through SMTP as " + from_);
    return 0;
  }
  if (maildir_.empty()) {
    if (info.data_dir.empty()) return fail("maildir is needed: the host gave no data_dir");
    maildir_ = info.data_dir + "/Maildir";
  }
  for (const char* sub : {"", "/tmp", "/new", "/cur"}) {
    if (int rc = MakeDir(maildir_ + sub); rc != 0) {
      info.Log(SLUICE_LOG_ERROR, "cannot create " + maildir_ + sub + ": " + std::strerror(-rc));
      return rc;
    }
  }
  api_ = info.api;
  use_tmpfile_ = TmpfileLinkWorks(maildir_ + "/tmp");
  info.Log(SLUICE_LOG_INFO, "no [smtp] relay configured: writing mail to the Maildir " + maildir_ +
                                (use_tmpfile_ ? "" : " (no O_TMPFILE or /proc there: through named files in tmp/)"));
  if (int removed = RemoveStaleTmp(maildir_ + "/tmp", static_cast<int64_t>(time(nullptr))); removed > 0) {
    info.Log(SLUICE_LOG_NOTICE, "removed " + std::to_string(removed) + " unfinished mails older than an hour from " +
                                    maildir_ + "/tmp (left by a worker that died before they were synced)");
  }
  return 0;
}

int NotificationPlugin::InitSmtp(const sdk::InitInfo& info, const json& smtp) {
  auto fail = [&](const std::string& message) {
    info.Log(SLUICE_LOG_ERROR, "config.smtp." + message);
    return -EINVAL;
  };
  if (!smtp.is_object()) return fail("must be a table");
  SmtpSettings s;
  std::string password_file;
  for (const auto& [key, value] : smtp.items()) {
    if (key == "host") {
      if (!value.is_string() || value.get<std::string>().empty()) return fail("host must be a name");
      s.host = value.get<std::string>();
    } else if (key == "port") {
      auto port = pl::IntIn(value, 1, 65535);
      if (!port) return fail("port must be 1 to 65535");
      s.port = *port;
    } else if (key == "starttls") {
      if (!value.is_boolean()) return fail("starttls must be true or false");
      s.starttls = value.get<bool>();
    } else if (key == "username" || key == "password_file" || key == "from" || key == "ca_file") {
      if (!value.is_string()) return fail(key + " must be a string");
      std::string v = value.get<std::string>();
      if (key == "username") s.username = v;
      if (key == "password_file") password_file = v;
      if (key == "from") from_ = v;
      if (key == "ca_file") s.ca_file = v;
    } else if (key == "timeout_ms" || key == "connect_timeout_ms") {
      auto ms = pl::IntIn(value, 100, 600'000);
      if (!ms) return fail(key + " must be 100 to 600000");
      (key == "timeout_ms" ? s.timeout_ms : s.connect_timeout_ms) = *ms;
    } else {
      info.Log(SLUICE_LOG_WARNING, "config.smtp: unknown key '" + key + "' ignored");
    }
  }
  if (s.host.empty()) return fail("host is required");
  if (info.handler_timeout.count() > 0 && s.timeout_ms >= info.handler_timeout.count()) {
    // curl's timeout covers the whole send: a relay that slow would get the worker killed mid-send,
    // and each kill counts towards making the mail poison.
    return fail("timeout_ms (" + std::to_string(s.timeout_ms) + ") must be below the plugin's handler_timeout (" +
                std::to_string(info.handler_timeout.count()) + " ms): lower it, or raise handler_timeout");
  }
  if (!password_file.empty()) {
    if (s.username.empty()) return fail("password_file needs a username");
    std::ifstream in(password_file);
    if (!in) return fail("password_file: cannot read " + password_file);
    std::getline(in, s.password);
    while (!s.password.empty() && (s.password.back() == '\r' || s.password.back() == '\n')) {
      s.password.pop_back();
    }
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    info.Log(SLUICE_LOG_ERROR, "curl_global_init failed");
    return -EIO;
  }
  curl_initialized_ = true;
  smtp_ = std::make_unique<SmtpSender>(std::move(s));
  return 0;
}

sdk::Result NotificationPlugin::Handle(const sdk::Message& m, sdk::Context& ctx) {
  if (m.topic() != pl::kOrderEvents) {
    return sdk::Result::Reject("notification does not consume topic '" + std::string(m.topic()) + "'");
  }
  Mail mail;
  if (m.type() == pl::kOrderCreated) {
    pl::Verified<orders::OrderCreated> ev(m.payload(), orders::OrderCreatedIdentifier());
    if (!ev) return sdk::Result::Reject("payload is not an orders.OrderCreated FlatBuffer");
    mail.to = pl::Str(ev->email());
    mail.order_id = pl::Str(ev->order_id());
    mail.kind = "order-created";
    mail.subject = "Thank you for your order " + mail.order_id;
    mail.body = {"Hello,", "", "thank you for your order " + mail.order_id + ". We received:", ""};
    AddItems(mail.body, Lines(ev->items()), ev->total_cents());
    mail.body.insert(mail.body.end(), {"", "We will write again if anything changes."});
  } else if (m.type() == pl::kOrderCancelled) {
    pl::Verified<orders::OrderCancelled> ev(m.payload(), orders::OrderCancelledIdentifier());
    if (!ev) return sdk::Result::Reject("payload is not an orders.OrderCancelled FlatBuffer");
    mail.to = pl::Str(ev->email());
    mail.order_id = pl::Str(ev->order_id());
    mail.kind = "order-cancelled";
    mail.subject = "Your order " + mail.order_id + " was cancelled";
    mail.body = {"Hello,", "", "we are sorry: your order " + mail.order_id + " was cancelled.", "", "Why:"};
    // Inventory joins one reason per SKU with "; ": one line each.
    std::string reason = pl::Str(ev->reason());
    size_t start = 0;
    while (start <= reason.size()) {
      size_t sep = reason.find("; ", start);
      std::string part = reason.substr(start, sep == std::string::npos ? std::string::npos : sep - start);
      mail.body.push_back("  " + Clean(part.empty() ? "no reason given" : part));
      if (sep == std::string::npos) break;
      start = sep + 2;
    }
    mail.body.insert(mail.body.end(), {"", "The order was:", ""});
    AddItems(mail.body, Lines(ev->items()), ev->total_cents());
  } else if (m.type() == pl::kOrderConfirmed) {
    if (!send_confirmation_) return sdk::Result::Ok();
    pl::Verified<orders::OrderConfirmed> ev(m.payload(), orders::OrderConfirmedIdentifier());
    if (!ev) return sdk::Result::Reject("payload is not an orders.OrderConfirmed FlatBuffer");
    mail.to = pl::Str(ev->email());
    mail.order_id = pl::Str(ev->order_id());
    mail.kind = "order-confirmed";
    mail.subject = "Your order " + mail.order_id + " is confirmed";
    mail.body = {"Hello,", "", "good news: your order " + mail.order_id + " is confirmed.", ""};
    AddItems(mail.body, Lines(ev->items()), ev->total_cents());
  } else {
    return sdk::Result::Ok();
  }
  if (!pl::IsToken(mail.order_id)) return sdk::Result::Reject("the event names no valid order id");
  if (std::string why = pl::CheckEmail(mail.to); !why.empty()) {
    return sdk::Result::Reject("invalid recipient address: " + why);
  }
  mail.body.insert(mail.body.end(), {"", "-- ", from_name_});
  return Deliver(mail, m, ctx);
}

std::string NotificationPlugin::Render(const Mail& mail, const sdk::Message& m, int64_t date_us,
                                       const char* eol) const {
  std::string out;
  auto header = [&](std::string_view name, std::string_view value) {
    out.append(name).append(": ").append(value).append(eol);
  };
  std::string event_id = m.id();
  header("Message-ID", "<" + event_id + "@sluice>");
  header("Date", RfcDate(date_us));
  header("From", "\"" + from_name_ + "\" <" + from_ + ">");
  header("To", "<" + mail.to + ">");
  header("Subject", mail.subject);
  header("MIME-Version", "1.0");
  header("Content-Type", "text/plain; charset=utf-8");
  header("Content-Transfer-Encoding", "8bit");
  header("X-Sluice-Mail", mail.kind);
  header("X-Sluice-Order-Id", mail.order_id);
  header("X-Sluice-Event-Id", event_id);
  out.append(eol);
  for (const std::string& line : mail.body) out.append(line).append(eol);
  return out;
}

sdk::Result NotificationPlugin::Backoff(const sdk::Message& m, const std::string& why) const {
  uint32_t shift = std::min<uint32_t>(m.delivery_count() > 0 ? m.delivery_count() - 1 : 0, 20);
  int64_t delay = std::min<int64_t>(retry_max_ms_, retry_base_ms_ << shift);
  return sdk::Result::Retry(std::chrono::milliseconds(delay), why);
}

sdk::Result NotificationPlugin::Deliver(const Mail& mail, const sdk::Message& m, sdk::Context& ctx) {
  if (smtp_ == nullptr) return WriteMaildir(mail, m, ctx);
  // The event's publish time, not the clock: a resend renders the very same message.
  int64_t date_us = m.publish_time_us() > 0 ? m.publish_time_us() : ctx.NowUs();
  std::string message = Render(mail, m, date_us, "\r\n");
  std::string detail;
  switch (smtp_->Send(from_, mail.to, message, &detail)) {
    case SmtpSender::Verdict::kSent:
      ctx.Log(SLUICE_LOG_DEBUG, mail.kind + " mail for " + mail.order_id + " sent to " + mail.to);
      return sdk::Result::Ok();
    case SmtpSender::Verdict::kReject:
      return sdk::Result::Reject("SMTP refused " + mail.to + ": " + detail);
    case SmtpSender::Verdict::kRetry:
      break;
  }
  ctx.Warning(mail.kind + " mail for " + mail.order_id + " not sent: " + detail);
  return Backoff(m, "SMTP: " + detail);
}

sdk::Result NotificationPlugin::WriteMaildir(const Mail& mail, const sdk::Message& m, sdk::Context& ctx) {
  int64_t date_us = m.publish_time_us() > 0 ? m.publish_time_us() : ctx.NowUs();
  PendingMail p{std::to_string(date_us / 1'000'000) + "." + m.id() + ".sluice"};
  const std::string final_path = maildir_ + "/new/" + p.name;
  if (pending_names_.count(p.name) > 0) {
    ctx.Log(SLUICE_LOG_INFO, "mail of event " + m.id() + " is written already and waits for sync: not written again");
    return sdk::Result::Ok();
  }
  int rc = CreateMail(&p, Render(mail, m, date_us, "\n"));
  if (rc == 0 && maildir_fsync_) {
    // Sync() makes it durable and links it into new/ before the message is acked.
    pending_names_.insert(p.name);
    pending_.push_back(std::move(p));
    ctx.Log(SLUICE_LOG_DEBUG, mail.kind + " mail for " + mail.order_id + " written, for " + final_path);
    return sdk::Result::Ok();
  }
  if (rc == 0) rc = LinkIntoNew(&p);
  if (rc != 0) return Backoff(m, "Maildir: writing " + final_path + ": " + std::strerror(-rc));
  ctx.Log(SLUICE_LOG_DEBUG, mail.kind + " mail for " + mail.order_id + " written to " + final_path);
  return sdk::Result::Ok();
}

int NotificationPlugin::CreateMail(PendingMail* p, std::string_view message) {
  const std::string tmp = maildir_ + "/tmp";
  int fd = -1;
  if (use_tmpfile_ && open_mails_ < kMaxOpenMails) fd = open(tmp.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ++open_mails_;
    p->fd = fd;
    int rc = WriteAll(fd, message);
    if (rc != 0) Discard(p);
    return rc;
  }
  const std::string path = TmpPath(*p);
  fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  int rc = WriteAll(fd, message);
  if (close(fd) != 0 && rc == 0) rc = -errno;
  if (rc != 0) unlink(path.c_str());
  return rc;
}

int NotificationPlugin::LinkIntoNew(PendingMail* p) {
  const std::string target = maildir_ + "/new/" + p->name;
  int rc = 0;
  if (p->fd >= 0) {
    if (linkat(AT_FDCWD, ProcFdPath(p->fd).c_str(), AT_FDCWD, target.c_str(), AT_SYMLINK_FOLLOW) != 0) rc = -errno;
  } else if (link(TmpPath(*p).c_str(), target.c_str()) != 0) {
    rc = -errno;
  }
  Discard(p);
  if (rc == -EEXIST) {
    // A resend after a crash (or after a Sync that failed later): the first mail stays, unchanged.
    api_->log(nullptr, SLUICE_LOG_INFO, (target + " is in the Maildir already: this resend is dropped").c_str());
    rc = 0;
  }
  return rc;
}

void NotificationPlugin::Discard(PendingMail* p) {
  if (p->fd >= 0) {
    close(p->fd);
    p->fd = -1;
    --open_mails_;
  } else {
    unlink(TmpPath(*p).c_str());
  }
}

int NotificationPlugin::Sync() {
  if (pending_.empty()) return 0;
  std::vector<PendingMail> mails;
  mails.swap(pending_);
  pending_names_.clear();
  const std::string fresh = maildir_ + "/new/";
  int rc = 0;
  int dir = open(fresh.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) rc = -errno;
  // One syncfs writes every mail's data and flushes the device once; fsyncing the files one by one
  // would cost a device flush each.
  if (rc == 0 && syncfs(dir) != 0) rc = -errno;
  // The mails are on disk and nothing here reads them again: their pages go back to the kernel now,
  // and the next mails can reuse them, instead of the page cache growing by a page per mail until
  // reclaim evicts them (and the store's pages with them). On a VM whose host takes free memory back, a page
  // never used before also costs a host fault when it is first written: the kernel's zeroing of each
  // new mail's page was 18 % of this worker's samples (bench/README.md, fourth session).
  if (rc == 0) {
    for (const PendingMail& p : mails) {
      if (p.fd >= 0) (void)posix_fadvise(p.fd, 0, 0, POSIX_FADV_DONTNEED);
    }
  }
  // After a failure the rest are discarded: every message of this run is retried and writes its mail
  // again, and a mail that did reach new/ is found there and kept.
  for (PendingMail& p : mails) {
    if (rc == 0) {
      rc = LinkIntoNew(&p);
    } else {
      Discard(&p);
    }
  }
  // The links are durable only once new/ is: until then a crash could lose an acked mail. On ext4 and
  // XFS this fsync also carries each inode's new link count (one journal transaction with the entry);
  // on ext4 without a journal a count lost in a crash is restored by e2fsck, which such a file system
  // needs after any crash. POSIX itself promises only the directory entries.
  if (rc == 0 && fsync(dir) != 0) rc = -errno;
  if (dir >= 0) close(dir);
  return rc;
}

// Mail follows every order event from the earliest one the topic holds, so an order placed before this
// subscription existed still gets its mail. Deliveries may wait for a slow relay (ack_wait 2 min) and
// retry for hours (max_deliveries 100 with backoff up to retry_max_ms) before a mail is dead-lettered.
const sluice_subscription kSubscriptions[] = {
    {"order.events", "notification", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 100, 120'000,
     pl::kPipelinePrefetch},
};

}  // namespace
}  // namespace sluice::notification_plugin

SLUICE_PLUGIN_NO_PUBLISHES(sluice::notification_plugin::NotificationPlugin, "notification", "1.0.0",
                           sluice::notification_plugin::kSubscriptions)

// Without Sync the host would ack a mail that is still only under tmp/.
static_assert(sluice::sdk::detail::kHasSync<sluice::notification_plugin::NotificationPlugin>,
              "NotificationPlugin::Sync must be found by the SDK");
