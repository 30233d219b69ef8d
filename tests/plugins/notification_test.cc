// SPDX-License-Identifier: MIT
//
// The notification plugin (plugins/notification) through the fake host: the Maildir writer (file
// layout, RFC 5322 content, a resend recognised) and SMTP against a real server — aiosmtpd, started by
// the test on a loopback port (tests/plugins/smtp_sink.py) and stopped by it; the test reads what the
// server received. The only waits are bounded polls for that server to start and stop.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "orders_messages.h"
#include "plugins/testing/fake_host.h"

namespace sluice::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

const std::vector<ItemSpec> kItems = {{"SKU-1", 2, 1250}, {"SKU-2", 1, 499}};

std::unique_ptr<FakeHost> LoadNotification(const std::string& config = "{}") {
  auto host = FakeHost::Load(SLUICE_PLUGIN_PATH, config);
  EXPECT_TRUE(host.ok()) << host.status().ToString();
  return host.ok() ? std::move(host.value()) : nullptr;
}

InMessage Created(const std::string& id, const std::string& email, FakeHost& host) {
  InMessage m = Event("order.events", "orders.OrderCreated", id, OrderCreatedPayload(id, email, kItems, 1));
  m.id = host.NextId();
  m.publish_time_us = host.now_us();  // as stored: a redelivery carries the same time
  return m;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> Files(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// The value of header `name` in an RFC 5322 message (first occurrence), without the line ending.
std::string Header(const std::string& message, const std::string& name) {
  std::istringstream in(message);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) break;
    if (line.rfind(name + ": ", 0) == 0) return line.substr(name.size() + 2);
  }
  return "";
}

TEST(NotificationPlugin, DescriptorSubscribesToOrderEventsAndPublishesNothing) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const sluice_plugin& d = host->descriptor();
  EXPECT_STREQ(d.name, "notification");
  ASSERT_EQ(d.n_subscriptions, 1u);
  EXPECT_STREQ(d.subscriptions[0].topic, "order.events");
  EXPECT_STREQ(d.subscriptions[0].name, "notification");
  EXPECT_EQ(d.n_publishes, 0u);
  for (const char* sub : {"tmp", "new", "cur"}) {
    EXPECT_TRUE(fs::is_directory(fs::path(host->data_dir()) / "Maildir" / sub)) << sub;
  }
}

TEST(NotificationPlugin, AsksOnlyForTheEventsItsConfigurationMails) {
  using Types = std::map<size_t, std::vector<std::string>>;
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  EXPECT_EQ(host->subscription_types(), (Types{{0, {"orders.OrderCreated", "orders.OrderCancelled"}}}));
  auto confirming = LoadNotification(R"({"send_confirmation": true})");
  ASSERT_TRUE(confirming);
  EXPECT_EQ(confirming->subscription_types(),
            (Types{{0, {"orders.OrderCreated", "orders.OrderCancelled", "orders.OrderConfirmed"}}}));
}

TEST(NotificationPlugin, OrderCreatedWritesAThankYouMailIntoTheMaildir) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  InMessage m = Created("ord-1", "ann@example.com", *host);
  Outcome o = host->Handle(m);
  ASSERT_TRUE(o.committed) << o.reason;
  EXPECT_TRUE(o.published.empty());

  fs::path maildir = fs::path(host->data_dir()) / "Maildir";
  EXPECT_TRUE(Files(maildir / "tmp").empty());
  auto mails = Files(maildir / "new");
  ASSERT_EQ(mails.size(), 1u);
  std::string event_id = FormatUuid(*m.id);
  EXPECT_EQ(mails[0].filename().string(),
            std::to_string(host->now_us() / 1'000'000) + "." + event_id + ".sluice");

  std::string mail = ReadFile(mails[0]);
  EXPECT_EQ(mail.find('\r'), std::string::npos) << "Maildir files end lines with LF";
  EXPECT_EQ(Header(mail, "Message-ID"), "<" + event_id + "@sluice>");
  EXPECT_EQ(Header(mail, "To"), "<ann@example.com>");
  EXPECT_EQ(Header(mail, "From"), "\"sluice shop\" <orders@example.com>");
  EXPECT_EQ(Header(mail, "Subject"), "Thank you for your order ord-1");
  EXPECT_EQ(Header(mail, "Date"), "Sun, 15 Jun 2025 15:06:40 +0000");
  EXPECT_EQ(Header(mail, "X-Sluice-Order-Id"), "ord-1");
  EXPECT_EQ(Header(mail, "Content-Type"), "text/plain; charset=utf-8");
  EXPECT_THAT(mail, HasSubstr("\n\nHello,\n"));
  EXPECT_THAT(mail, HasSubstr("SKU-1"));
  EXPECT_THAT(mail, HasSubstr("2 x      12.50 =        25.00"));
  EXPECT_THAT(mail, HasSubstr("29.99"));
}

// The plugin's own probe: an O_TMPFILE inode in `dir` that can be linked by its /proc/self/fd path.
bool TmpfileLinkWorks(const fs::path& dir) {
  int fd = open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  const fs::path probe = dir / ".test-probe";
  bool linked = linkat(AT_FDCWD, ("/proc/self/fd/" + std::to_string(fd)).c_str(), AT_FDCWD, probe.c_str(),
                       AT_SYMLINK_FOLLOW) == 0;
  if (linked) unlink(probe.c_str());
  close(fd);
  return linked;
}

TEST(NotificationPlugin, AResendAfterACrashFindsItsMailAndWritesNoSecond) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  InMessage m = Created("ord-2", "ann@example.com", *host);
  // The worker died after writing the mail and before its ack committed: the message comes again.
  host->Handle(m, Commit::kCrashBeforeCommit);
  // A mark in the delivered file shows whether the resend replaces it.
  const auto first = Files(fs::path(host->data_dir()) / "Maildir" / "new");
  ASSERT_EQ(first.size(), 1u);
  std::ofstream(first[0], std::ios::app) << "first copy\n";
  m.delivery_count = 2;
  host->Advance(30'000'000);
  ASSERT_TRUE(host->Handle(m).committed);
  EXPECT_EQ(Files(fs::path(host->data_dir()) / "Maildir" / "new").size(), 1u);
  EXPECT_THAT(ReadFile(first[0]), HasSubstr("first copy"));
  EXPECT_TRUE(host->Logged("in the Maildir already"));
  // Another event (another id) is another mail.
  ASSERT_TRUE(host->Handle(Created("ord-2", "ann@example.com", *host)).committed);
  EXPECT_EQ(Files(fs::path(host->data_dir()) / "Maildir" / "new").size(), 2u);
}

TEST(NotificationPlugin, AMailReachesNewOnlyThroughSyncAndACrashBeforeItLosesNothing) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const fs::path maildir = fs::path(host->data_dir()) / "Maildir";
  InMessage m = Created("ord-3", "ann@example.com", *host);
  // handle() wrote the mail into a file no reader sees: an unnamed O_TMPFILE inode, or without one a
  // named file in tmp/. The worker died before sync(), so nothing was acked.
  host->Handle(m, Commit::kCrashBeforeSync);
  EXPECT_EQ(Files(maildir / "tmp").size(), TmpfileLinkWorks(maildir / "tmp") ? 0u : 1u);
  EXPECT_TRUE(Files(maildir / "new").empty());
  ASSERT_TRUE(host->Restart().ok());
  m.delivery_count = 2;
  ASSERT_TRUE(host->Handle(m).committed);
  auto delivered = Files(maildir / "new");
  ASSERT_EQ(delivered.size(), 1u);
  EXPECT_EQ(Header(ReadFile(delivered[0]), "X-Sluice-Order-Id"), "ord-3");
  EXPECT_TRUE(Files(maildir / "tmp").empty());
}

// The same event handled again before sync() (its first run's bundle was lost, the worker lives on):
// the mail waiting for sync() is the one that reaches new/, once.
TEST(NotificationPlugin, AnEventHandledAgainBeforeSyncWritesNoSecondMail) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const fs::path maildir = fs::path(host->data_dir()) / "Maildir";
  InMessage m = Created("ord-4", "bo@example.com", *host);
  host->Handle(m, Commit::kCrashBeforeSync);
  m.delivery_count = 2;
  ASSERT_TRUE(host->Handle(m).committed);
  EXPECT_TRUE(host->Logged("is written already and waits for sync: not written again"));
  auto delivered = Files(maildir / "new");
  ASSERT_EQ(delivered.size(), 1u);
  EXPECT_EQ(Header(ReadFile(delivered[0]), "X-Sluice-Order-Id"), "ord-4");
}

// How many of `path`'s pages are in the page cache (mincore of a shared read-only mapping that is
// never touched), or nothing when that cannot be seen.
std::optional<size_t> CachedPages(const fs::path& path) {
  std::error_code ec;
  const size_t size = fs::file_size(path, ec);
  if (ec || size == 0) return std::nullopt;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return std::nullopt;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  std::optional<size_t> cached;
  if (mincore(map, size, resident.data()) == 0) {
    cached = 0;
    for (unsigned char r : resident) *cached += r & 1;
  }
  munmap(map, size);
  return cached;
}

// Whether the file system under `dir` shows a written file's page in the cache and drops it, once
// synced, on POSIX_FADV_DONTNEED (tmpfs, for one, keeps it: its pages are the file).
bool DropsCleanPages(const fs::path& dir) {
  const fs::path probe = dir / ".cache-probe";
  int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = write(fd, "probe", 5) == 5 && fsync(fd) == 0 && CachedPages(probe) == std::optional<size_t>(1) &&
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0 && CachedPages(probe) == std::optional<size_t>(0);
  close(fd);
  unlink(probe.c_str());
  return ok;
}

// Mails are written once and read by someone else later: once Sync has them on disk, their pages
// leave the page cache instead of piling up until reclaim.
TEST(NotificationPlugin, ASyncedMailLeavesThePageCache) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const fs::path maildir = fs::path(host->data_dir()) / "Maildir";
  if (!TmpfileLinkWorks(maildir / "tmp")) GTEST_SKIP() << "no O_TMPFILE (or no /proc) here: mails are named files";
  if (!DropsCleanPages(maildir / "tmp")) GTEST_SKIP() << "this file system keeps a file's pages after DONTNEED";
  ASSERT_TRUE(host->Handle(Created("ord-6", "ann@example.com", *host)).committed);
  auto delivered = Files(maildir / "new");
  ASSERT_EQ(delivered.size(), 1u);
  EXPECT_EQ(CachedPages(delivered[0]), std::optional<size_t>(0));
  // The control: without maildir_fsync there is no Sync, the mail is linked at once, and its pages
  // stay, so the check above can see a cached page.
  auto unsynced = LoadNotification(R"({ "maildir_fsync": false })");
  ASSERT_TRUE(unsynced);
  ASSERT_TRUE(unsynced->Handle(Created("ord-7", "ann@example.com", *unsynced)).committed);
  auto linked = Files(fs::path(unsynced->data_dir()) / "Maildir" / "new");
  ASSERT_EQ(linked.size(), 1u);
  EXPECT_GE(CachedPages(linked[0]).value_or(0), 1u);
}

size_t OpenFileDescriptors() {
  return static_cast<size_t>(std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator()));
}

// The plugin holds at most 512 unnamed mails open until sync() (kMaxOpenMails); past that it writes
// named files under tmp/, which is also how it works on a file system without O_TMPFILE.
TEST(NotificationPlugin, PastTheOpenFileCapMailsWaitForSyncAsNamedFilesInTmp) {
  constexpr size_t kMaxOpenMails = 512;
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const fs::path maildir = fs::path(host->data_dir()) / "Maildir";
  if (!TmpfileLinkWorks(maildir / "tmp")) GTEST_SKIP() << "no O_TMPFILE (or no /proc) here: every mail is a named file";
  const size_t fds_before = OpenFileDescriptors();
  for (size_t i = 0; i < kMaxOpenMails + 2; ++i) {
    host->Handle(Created("ord-" + std::to_string(i), "ann@example.com", *host), Commit::kCrashBeforeSync);
  }
  EXPECT_EQ(OpenFileDescriptors(), fds_before + kMaxOpenMails);
  EXPECT_EQ(Files(maildir / "tmp").size(), 2u);
  EXPECT_TRUE(Files(maildir / "new").empty());
  // This run's sync() makes every mail written since the last one durable and links it into new/.
  ASSERT_TRUE(host->Handle(Created("ord-last", "ann@example.com", *host)).committed);
  EXPECT_EQ(Files(maildir / "new").size(), kMaxOpenMails + 3);
  EXPECT_TRUE(Files(maildir / "tmp").empty());
  EXPECT_EQ(OpenFileDescriptors(), fds_before);
}

TEST(NotificationPlugin, UnfinishedMailsOlderThanAnHourAreRemovedFromTmpAtStart) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const fs::path tmp = fs::path(host->data_dir()) / "Maildir" / "tmp";
  std::ofstream(tmp / "stale.sluice.1") << "half a mail";
  std::ofstream(tmp / "fresh.sluice.2") << "being written";
  fs::last_write_time(tmp / "stale.sluice.1", fs::file_time_type::clock::now() - std::chrono::hours(2));
  ASSERT_TRUE(host->Restart().ok());
  EXPECT_FALSE(fs::exists(tmp / "stale.sluice.1"));
  EXPECT_TRUE(fs::exists(tmp / "fresh.sluice.2"));
  EXPECT_TRUE(host->Logged("removed 1 unfinished mails older than an hour"));
}

TEST(NotificationPlugin, ASyncThatFailsRetriesTheMessageAndLeavesNoHalfMail) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  const fs::path maildir = fs::path(host->data_dir()) / "Maildir";
  fs::remove_all(maildir / "new");
  InMessage m = Created("ord-4", "ann@example.com", *host);
  Outcome o = host->Handle(m);
  EXPECT_EQ(o.outcome, SLUICE_RETRY);
  EXPECT_FALSE(o.committed);
  EXPECT_THAT(o.reason, HasSubstr("sync() failed"));
  EXPECT_TRUE(Files(maildir / "tmp").empty());
  // Once the Maildir is whole again, the redelivery sends it.
  fs::create_directory(maildir / "new");
  m.delivery_count = 2;
  ASSERT_TRUE(host->Handle(m).committed);
  EXPECT_EQ(Files(maildir / "new").size(), 1u);
}

TEST(NotificationPlugin, WithoutMaildirFsyncTheMailIsInNewWhenHandleReturns) {
  auto host = LoadNotification(R"({"maildir_fsync": false})");
  ASSERT_TRUE(host);
  host->Handle(Created("ord-5", "ann@example.com", *host), Commit::kCrashBeforeSync);
  EXPECT_EQ(Files(fs::path(host->data_dir()) / "Maildir" / "new").size(), 1u);
}

TEST(NotificationPlugin, OrderCancelledSendsACancellationWithTheReasons) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  Outcome o = host->Handle(
      Event("order.events", "orders.OrderCancelled", "ord-3",
            OrderCancelledPayload(
                "ord-3", "bob@example.com", kItems,
                "insufficient stock: SKU-2 (requested 1, available 0); unknown sku: X\r\nBcc: x")));
  ASSERT_TRUE(o.committed) << o.reason;
  auto mails = Files(fs::path(host->data_dir()) / "Maildir" / "new");
  ASSERT_EQ(mails.size(), 1u);
  std::string mail = ReadFile(mails[0]);
  EXPECT_EQ(Header(mail, "Subject"), "Your order ord-3 was cancelled");
  EXPECT_EQ(Header(mail, "To"), "<bob@example.com>");
  EXPECT_EQ(Header(mail, "Bcc"), "");
  EXPECT_THAT(mail, HasSubstr("\n  insufficient stock: SKU-2 (requested 1, available 0)\n"));
  EXPECT_THAT(mail, HasSubstr("\n  unknown sku: X  Bcc: x\n"));
}

TEST(NotificationPlugin, ConfirmationMailOnlyWhenConfigured) {
  InMessage confirmed = Event("order.events", "orders.OrderConfirmed", "ord-4",
                              OrderConfirmedPayload("ord-4", "ann@example.com", kItems));
  auto quiet = LoadNotification();
  ASSERT_TRUE(quiet);
  EXPECT_TRUE(quiet->Handle(confirmed).committed);
  EXPECT_TRUE(Files(fs::path(quiet->data_dir()) / "Maildir" / "new").empty());

  auto chatty = LoadNotification(
      R"({"send_confirmation": true, "from": "shop@example.com", "from_name": "Ann's Shop"})");
  ASSERT_TRUE(chatty);
  EXPECT_TRUE(chatty->Handle(confirmed).committed);
  auto mails = Files(fs::path(chatty->data_dir()) / "Maildir" / "new");
  ASSERT_EQ(mails.size(), 1u);
  std::string mail = ReadFile(mails[0]);
  EXPECT_EQ(Header(mail, "Subject"), "Your order ord-4 is confirmed");
  EXPECT_EQ(Header(mail, "From"), "\"Ann's Shop\" <shop@example.com>");
}

TEST(NotificationPlugin, AnInvalidAddressOrPayloadIsRejected) {
  auto host = LoadNotification();
  ASSERT_TRUE(host);
  Outcome bad_address = host->Handle(Created("ord-5", "not an address", *host));
  EXPECT_EQ(bad_address.outcome, SLUICE_REJECT);
  EXPECT_THAT(bad_address.reason, HasSubstr("invalid recipient"));
  Outcome bad_payload = host->Handle(Event("order.events", "orders.OrderCreated", "ord-5", "junk"));
  EXPECT_EQ(bad_payload.outcome, SLUICE_REJECT);
  EXPECT_TRUE(Files(fs::path(host->data_dir()) / "Maildir" / "new").empty());
  // Event types it does not mail about are acked.
  EXPECT_TRUE(host->Handle(Event("order.events", "orders.Something", "ord-5", "")).ok());
}

TEST(NotificationPlugin, AMaildirFailureIsARetryWithBackoff) {
  auto host = LoadNotification(R"({"retry_base_ms": 100, "retry_max_ms": 1000})");
  ASSERT_TRUE(host);
  fs::remove_all(fs::path(host->data_dir()) / "Maildir" / "tmp");
  InMessage m = Created("ord-6", "ann@example.com", *host);
  std::vector<uint32_t> delays;
  for (uint32_t delivery : {1u, 2u, 3u, 6u}) {
    m.delivery_count = delivery;
    Outcome o = host->Handle(m);
    EXPECT_EQ(o.outcome, SLUICE_RETRY);
    EXPECT_THAT(o.reason, HasSubstr("Maildir"));
    delays.push_back(o.retry_after_ms);
  }
  EXPECT_EQ(delays, (std::vector<uint32_t>{100, 200, 400, 1000}));
}

TEST(NotificationPlugin, ABadConfigRefusesToStart) {
  for (const char* config :
       {R"({"send_confirmation": "yes"})", R"({"from": "nobody"})", R"({"from_name": "A \"B\""})",
        R"({"smtp": {"port": 25}})", R"({"smtp": {"host": "x", "port": 70000}})",
        R"({"smtp": {"host": "x", "username": "u", "password_file": "/nonexistent/pw"}})"}) {
    EXPECT_FALSE(FakeHost::Load(SLUICE_PLUGIN_PATH, config).ok()) << config;
  }
}

TEST(NotificationPlugin, AnSmtpTimeoutBeyondTheHandlerTimeoutRefusesToStart) {
  // The fake host passes the daemon's default handler_timeout, 30 s.
  auto slow = FakeHost::Load(SLUICE_PLUGIN_PATH, R"({"smtp": {"host": "relay", "timeout_ms": 30000}})");
  ASSERT_FALSE(slow.ok());
  EXPECT_TRUE(FakeHost::Load(SLUICE_PLUGIN_PATH, R"({"smtp": {"host": "relay", "timeout_ms": 29000}})").ok());
}

// aiosmtpd in a child process, for one test.
class SmtpSink {
 public:
  explicit SmtpSink(std::vector<std::string> extra_args = {}) {
    dir_ = fs::temp_directory_path() /
           ("sluice-smtp-sink-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    int in[2];
    int out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return;
    std::string script = std::string(SLUICE_SOURCE_DIR) + "/tests/plugins/smtp_sink.py";
    std::vector<std::string> args = {Python(), script, dir_.string()};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
    // Bounded wait for "PORT <n>".
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{stdout_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[128];
      ssize_t n = read(stdout_, buf, sizeof(buf));
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    if (line.rfind("PORT ", 0) == 0) port_ = std::stoi(line.substr(5));
  }

  ~SmtpSink() {
    if (stdin_ >= 0) close(stdin_);  // the sink exits when its stdin closes
    if (pid_ > 0) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      int status = 0;
      while (waitpid(pid_, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          kill(pid_, SIGKILL);
          waitpid(pid_, &status, 0);
          break;
        }
        poll(nullptr, 0, 10);
      }
    }
    if (stdout_ >= 0) close(stdout_);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  int port() const { return port_; }

  // Every message received, in arrival order.
  std::vector<std::string> Received() const {
    std::vector<std::string> out;
    for (int i = 1;; ++i) {
      fs::path p = dir_ / (std::to_string(i) + ".eml");
      if (!fs::exists(p)) break;
      out.push_back(ReadFile(p));
    }
    return out;
  }

  // A notification config for this sink; `smtp_extra` and `top_extra` are ", key: value" lists.
  std::string Config(const std::string& smtp_extra = "", const std::string& top_extra = "") const {
    return R"({"smtp": {"host": "127.0.0.1", "port": )" + std::to_string(port_) +
           R"(, "from": "shop@example.com", "timeout_ms": 5000)" + smtp_extra + "}" + top_extra + "}";
  }

  // The Debian interpreter, which has python3-aiosmtpd; a PATH python3 (a pyenv shim) may not.
  static std::string Python() {
    if (const char* env = std::getenv("SLUICE_PYTHON3")) return env;
    if (access("/usr/bin/python3", X_OK) == 0) return "/usr/bin/python3";
    return SLUICE_PYTHON3;
  }

 private:
  static inline int counter_ = 0;
  fs::path dir_;
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
  int port_ = 0;
};

TEST(NotificationSmtp, SendsTheMailWithAMessageIdFromTheEventId) {
  SmtpSink sink;
  ASSERT_NE(sink.port(), 0) << "the aiosmtpd sink did not start (apt install python3-aiosmtpd)";
  auto host = LoadNotification(sink.Config());
  ASSERT_TRUE(host);
  InMessage m = Created("ord-10", "ann@example.com", *host);
  Outcome o = host->Handle(m);
  ASSERT_TRUE(o.committed) << o.reason;

  auto received = sink.Received();
  ASSERT_EQ(received.size(), 1u);
  const std::string& mail = received[0];
  std::string event_id = FormatUuid(*m.id);
  EXPECT_EQ(Header(mail, "X-Sink-Mail-From"), "shop@example.com");
  EXPECT_EQ(Header(mail, "X-Sink-Rcpt-To"), "ann@example.com");
  EXPECT_EQ(Header(mail, "Message-ID"), "<" + event_id + "@sluice>");
  EXPECT_EQ(Header(mail, "Subject"), "Thank you for your order ord-10");
  EXPECT_EQ(Header(mail, "To"), "<ann@example.com>");
  EXPECT_THAT(mail, HasSubstr("\r\n\r\nHello,\r\n"));
  EXPECT_THAT(mail, HasSubstr("29.99"));
  EXPECT_TRUE(Files(fs::path(host->data_dir()) / "Maildir").empty()) << "no Maildir with a relay";
}

TEST(NotificationSmtp, AResendAfterACrashCarriesTheSameMessageId) {
  SmtpSink sink;
  ASSERT_NE(sink.port(), 0);
  auto host = LoadNotification(sink.Config());
  ASSERT_TRUE(host);
  InMessage m = Created("ord-11", "ann@example.com", *host);
  host->Handle(m, Commit::kCrashBeforeCommit);
  m.delivery_count = 2;
  ASSERT_TRUE(host->Handle(m).committed);
  // SMTP is at-least-once: the relay got the mail twice, and the receiver can tell it is one mail.
  auto received = sink.Received();
  ASSERT_EQ(received.size(), 2u);
  EXPECT_EQ(Header(received[0], "Message-ID"), Header(received[1], "Message-ID"));
  EXPECT_EQ(Header(received[0], "Date"), Header(received[1], "Date"));
}

TEST(NotificationSmtp, ARecipientRefusedWith5xxIsRejected) {
  SmtpSink sink;
  ASSERT_NE(sink.port(), 0);
  auto host = LoadNotification(sink.Config());
  ASSERT_TRUE(host);
  Outcome o = host->Handle(Created("ord-12", "bob@reject.example", *host));
  EXPECT_EQ(o.outcome, SLUICE_REJECT);
  EXPECT_THAT(o.reason, HasSubstr("550"));
  EXPECT_TRUE(sink.Received().empty());
}

TEST(NotificationSmtp, A4xxIsARetryWithBackoff) {
  SmtpSink sink;
  ASSERT_NE(sink.port(), 0);
  auto host = LoadNotification(sink.Config("", R"(, "retry_base_ms": 250)"));
  ASSERT_TRUE(host);
  InMessage m = Created("ord-13", "bob@later.example", *host);
  m.delivery_count = 3;
  Outcome o = host->Handle(m);
  EXPECT_EQ(o.outcome, SLUICE_RETRY);
  EXPECT_THAT(o.reason, HasSubstr("451"));
  EXPECT_EQ(o.retry_after_ms, 1000u);
  EXPECT_TRUE(sink.Received().empty());
}

TEST(NotificationSmtp, AnUnreachableRelayIsARetry) {
  // A port that was free a moment ago: nothing listens on it.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  int port = ntohs(addr.sin_port);
  close(fd);

  auto host = LoadNotification(R"({"smtp": {"host": "127.0.0.1", "port": )" + std::to_string(port) + "}}");
  ASSERT_TRUE(host);
  Outcome o = host->Handle(Created("ord-14", "ann@example.com", *host));
  EXPECT_EQ(o.outcome, SLUICE_RETRY);
  EXPECT_GT(o.retry_after_ms, 0u);
  EXPECT_TRUE(host->Logged("not sent"));
}

TEST(NotificationSmtp, StarttlsRequiredButNotOfferedIsARetry) {
  SmtpSink sink;
  ASSERT_NE(sink.port(), 0);
  auto host = LoadNotification(sink.Config(R"(, "starttls": true)"));
  ASSERT_TRUE(host);
  Outcome o = host->Handle(Created("ord-15", "ann@example.com", *host));
  EXPECT_EQ(o.outcome, SLUICE_RETRY);
  EXPECT_TRUE(sink.Received().empty()) << "nothing goes out in clear text";
}

TEST(NotificationSmtp, AuthenticatesWithThePasswordFile) {
  SmtpSink sink({"--user", "mailer", "--password", "s3cret"});
  ASSERT_NE(sink.port(), 0);
  fs::path pw = fs::temp_directory_path() / ("sluice-smtp-pw-" + std::to_string(getpid()));
  std::ofstream(pw) << "s3cret\n";
  fs::path wrong = pw.string() + "-wrong";
  std::ofstream(wrong) << "guess\n";

  auto host =
      LoadNotification(sink.Config(R"(, "username": "mailer", "password_file": ")" + pw.string() + "\""));
  ASSERT_TRUE(host);
  Outcome ok = host->Handle(Created("ord-16", "ann@example.com", *host));
  EXPECT_TRUE(ok.committed) << ok.reason;
  EXPECT_EQ(sink.Received().size(), 1u);

  auto denied =
      LoadNotification(sink.Config(R"(, "username": "mailer", "password_file": ")" + wrong.string() + "\""));
  ASSERT_TRUE(denied);
  Outcome no = denied->Handle(Created("ord-17", "ann@example.com", *denied));
  EXPECT_EQ(no.outcome, SLUICE_RETRY) << "a login problem is the relay's or the config's, not the mail's";
  EXPECT_EQ(sink.Received().size(), 1u);
  fs::remove(pw);
  fs::remove(wrong);
}

}  // namespace
}  // namespace sluice::testing
