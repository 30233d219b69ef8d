// SPDX-License-Identifier: MIT
#include "daemon/metrics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "daemon/config.h"

namespace sluice {
namespace {

// A label value in the exposition format: backslash, double quote and newline escaped.
std::string Label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

class Writer {
 public:
  void Family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  template <typename T>
  void Sample(std::string_view name, std::string_view labels, T value) {
    if (labels.empty()) out_ += fmt::format("{} {}\n", name, value);
    else out_ += fmt::format("{}{{{}}} {}\n", name, labels, value);
  }
  void Histo(std::string_view name, std::string_view help, const Histogram& h) {
    Family(name, "histogram", help);
    for (size_t i = 0; i < h.bounds().size(); ++i) {
      out_ += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, h.bounds()[i], h.CumulativeCount(i));
    }
    out_ += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count(), name, h.sum(), name,
                        h.count());
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

uint64_t OpenFds() {
  uint64_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (struct dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
    if (n > 0) --n;  // the directory stream's own descriptor
  }
  return n;
}

enum MHD_Result Answer(struct MHD_Connection* connection, unsigned status, const std::string& body,
                       const char* content_type) {
  struct MHD_Response* r =
      MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(r, "Content-Type", content_type);
  enum MHD_Result ret = MHD_queue_response(connection, status, r);
  MHD_destroy_response(r);
  return ret;
}

enum MHD_Result OnRequest(void* cls, struct MHD_Connection* connection, const char* url, const char* method,
                          const char* /*version*/, const char* /*upload_data*/, size_t* /*upload_data_size*/,
                          void** /*ptr*/) {
  auto* self = static_cast<MetricsHttpServer*>(cls);
  if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0) {
    return Answer(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET /metrics is served\n", "text/plain");
  }
  if (std::strcmp(url, "/metrics") != 0) {
    return Answer(connection, MHD_HTTP_NOT_FOUND, "only GET /metrics is served\n", "text/plain");
  }
  return Answer(connection, MHD_HTTP_OK, self->Text(), "text/plain; version=0.0.4; charset=utf-8");
}

}  // namespace

std::string RenderMetrics(const MetricsSources& s) {
  Writer w;
  if (s.backend != nullptr) {
    auto topics = s.backend->ListTopics();
    if (topics.ok()) {
      w.Family("sluice_topic_messages", "gauge", "Messages stored in the topic.");
      for (const auto& t : *topics) w.Sample("sluice_topic_messages", fmt::format("topic=\"{}\"", Label(t.name)), t.messages);
      w.Family("sluice_topic_bytes", "gauge", "Bytes of stored messages in the topic.");
      for (const auto& t : *topics) w.Sample("sluice_topic_bytes", fmt::format("topic=\"{}\"", Label(t.name)), t.bytes);
      w.Family("sluice_topic_published_total", "counter", "Messages published to the topic since the daemon started.");
      for (const auto& t : *topics) {
        w.Sample("sluice_topic_published_total", fmt::format("topic=\"{}\"", Label(t.name)), t.published);
      }
    }
    auto subs = s.backend->ListSubscriptions();
    if (subs.ok()) {
      struct Series {
        const char* name;
        const char* type;
        const char* help;
        uint64_t broker::SubscriptionInfo::*field;
      };
      static const Series kSeries[] = {
          {"sluice_subscription_pending", "gauge", "Messages not yet acknowledged by the subscription.",
           &broker::SubscriptionInfo::pending},
          {"sluice_subscription_in_flight", "gauge", "Messages delivered and not yet settled.",
           &broker::SubscriptionInfo::in_flight},
          {"sluice_subscription_dead_lettered", "gauge", "Messages in the subscription's dead-letter queue.",
           &broker::SubscriptionInfo::dead_lettered},
          {"sluice_subscription_parked_keys", "gauge", "Keys parked by a dead letter (ordering = key).",
           &broker::SubscriptionInfo::parked_keys},
          {"sluice_subscription_delivered_total", "counter", "Deliveries since the daemon started.",
           &broker::SubscriptionInfo::delivered},
          {"sluice_subscription_acked_total", "counter", "Acknowledgements since the daemon started.",
           &broker::SubscriptionInfo::acked},
          {"sluice_subscription_redelivered_total", "counter", "Deliveries after the first since the daemon started.",
           &broker::SubscriptionInfo::redelivered},
          {"sluice_subscription_skipped_total", "counter", "Messages skipped by on_full = \"skip\" or drop_oldest.",
           &broker::SubscriptionInfo::skipped},
          {"sluice_subscription_filtered_total", "counter",
           "Messages acked without delivery: not of the types the consumers asked for.",
           &broker::SubscriptionInfo::filtered},
      };
      for (const auto& series : kSeries) {
        w.Family(series.name, series.type, series.help);
        for (const auto& sub : *subs) {
          w.Sample(series.name, fmt::format("topic=\"{}\",subscription=\"{}\"", Label(sub.topic), Label(sub.name)),
                   sub.*series.field);
        }
      }
      w.Family("sluice_subscription_consumers", "gauge", "Consumers attached to the subscription.");
      for (const auto& sub : *subs) {
        w.Sample("sluice_subscription_consumers",
                 fmt::format("topic=\"{}\",subscription=\"{}\"", Label(sub.topic), Label(sub.name)), sub.consumers);
      }
      w.Family("sluice_subscription_oldest_unacked_age_seconds", "gauge", "Age of the oldest unacknowledged message.");
      for (const auto& sub : *subs) {
        w.Sample("sluice_subscription_oldest_unacked_age_seconds",
                 fmt::format("topic=\"{}\",subscription=\"{}\"", Label(sub.topic), Label(sub.name)),
                 static_cast<double>(sub.oldest_unacked_age_us) / 1e6);
      }
    }
    if (const broker::StoreMetrics* m = s.backend->metrics()) {
      w.Histo("sluice_commit_batch_ops", "Operations committed per group commit.", m->commit_batch_ops);
      w.Histo("sluice_commit_seconds", "Duration of one group commit, with its fsync under durability = sync.",
              m->commit_seconds);
      w.Histo("sluice_sync_seconds", "Duration of an explicit fsync under durability = batch.", m->sync_seconds);
      w.Family("sluice_store_file_bytes", "gauge", "Size of the store file data.mdb, its preallocated tail included.");
      w.Sample("sluice_store_file_bytes", "", m->file_bytes.load(std::memory_order_relaxed));
      w.Family("sluice_store_preallocate_failures_total", "counter",
               "Failed writes of the store file's preallocated tail (a full disk): retried after 10 s.");
      w.Sample("sluice_store_preallocate_failures_total", "", m->preallocate_failures.load(std::memory_order_relaxed));
    }
  }
  if (s.service != nullptr) {
    const auto& st = s.service->stats();
    w.Histo("sluice_publish_ack_seconds", "From a Publish frame's arrival to its PublishAck (commit included).",
            s.service->publish_ack_seconds());
    w.Histo("sluice_request_seconds",
            "From a Request frame's arrival to its Reply or Error (the handler's run and its commit included; "
            "a timed-out request counts at its timeout).",
            s.service->request_seconds());
    w.Histo("sluice_bundle_seconds", "From a plugin's Bundle frame's arrival to its BundleAck (commit included).",
            s.service->bundle_seconds());
    w.Family("sluice_connections", "gauge", "Open connections on the broker socket (plugin workers included).");
    w.Sample("sluice_connections", "", s.service->connection_count());
    w.Family("sluice_protocol_errors_total", "counter", "Connections closed for a frame that broke the protocol.");
    w.Sample("sluice_protocol_errors_total", "", st.protocol_errors);
    w.Family("sluice_bundles_total", "counter",
             "Plugin bundles by outcome (a run without effects is acked, not bundled).");
    w.Sample("sluice_bundles_total", "outcome=\"committed\"", st.bundles_committed);
    w.Sample("sluice_bundles_total", "outcome=\"conflict\"", st.bundles_conflict);
    w.Sample("sluice_bundles_total", "outcome=\"lease_lost\"", st.bundles_lease_lost);
    w.Sample("sluice_bundles_total", "outcome=\"refused\"", st.bundles_refused);
  }
  struct PluginSeries {
    const char* name;
    const char* type;
    const char* key;
    const char* help;
  };
  static const PluginSeries kPlugin[] = {
      {"sluice_plugin_handled_total", "counter", "handled",
       "Messages the plugin's handlers completed: effects committed, or an Ack sent for a run without effects."},
      {"sluice_plugin_retried_total", "counter", "retried", "Handler runs that asked for a retry."},
      {"sluice_plugin_rejected_total", "counter", "rejected", "Handler runs that rejected their message."},
      {"sluice_plugin_restarts_total", "counter", "restarts", "Worker restarts."},
      {"sluice_plugin_in_flight", "gauge", "in_flight", "Messages held by the plugin's workers."},
      {"sluice_plugin_running_workers", "gauge", "running", "Workers running."},
  };
  for (const auto& series : kPlugin) {
    w.Family(series.name, series.type, series.help);
    for (const auto& p : s.plugins) {
      w.Sample(series.name, fmt::format("plugin=\"{}\"", Label(p.value("name", ""))), p.value(series.key, uint64_t{0}));
    }
  }
  w.Family("process_resident_memory_bytes", "gauge", "Resident memory of sluiced (workers not included).");
  w.Sample("process_resident_memory_bytes", "", ResidentBytes());
  w.Family("process_open_fds", "gauge", "Open file descriptors of sluiced.");
  w.Sample("process_open_fds", "", OpenFds());
  return w.Take();
}

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& listen) {
  std::optional<sockaddr_storage> addr = ParseListenAddress(listen);
  if (!addr) {
    // The config loader refuses such a value; this is for callers that did not load one.
    return InvalidArgument(fmt::format("metrics.listen: \"{}\" is not HOST:PORT with an IP address "
                                       "(\"127.0.0.1:9464\", \"[::1]:9464\")",
                                       listen));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
  if (addr->ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  server->daemon_ = MHD_start_daemon(flags, 0, nullptr, nullptr, &OnRequest, server.get(), MHD_OPTION_SOCK_ADDR,
                                     reinterpret_cast<sockaddr*>(&*addr), MHD_OPTION_CONNECTION_LIMIT, 64u,
                                     MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
  if (server->daemon_ == nullptr) {
    return Status(StatusCode::kUnavailable, fmt::format("metrics.listen: cannot listen on {}", listen));
  }
  const union MHD_DaemonInfo* info = MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  const uint16_t port = addr->ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&*addr)->sin6_port
                                                   : reinterpret_cast<const sockaddr_in*>(&*addr)->sin_port;
  server->port_ = info != nullptr ? info->port : ntohs(port);
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

void MetricsHttpServer::SetText(std::string text) {
  std::lock_guard lock(mu_);
  text_ = std::move(text);
}

std::string MetricsHttpServer::Text() {
  std::lock_guard lock(mu_);
  return text_;
}

}  // namespace sluice
