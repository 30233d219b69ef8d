// SPDX-License-Identifier: MIT
//
// A test plugin whose handler has no effect: it subscribes to "in" as "ignore" and returns OK without
// reading, writing, publishing or replying, as Notification does for a mail or Inventory for an event
// it does not act on. The host acks such a message instead of committing a bundle (worker.cc,
// AckOnly), which the plugin host test checks with the broker's bundle counter. Config
// {"sleep_ms": N} makes each run take N ms (a slow mail relay); with {"slow_prefix": "P"} too, only the
// runs of payloads that start with P do. With {"types": [...]} its subscription delivers only those
// types (set_subscription_types; {"types_index": N} names another subscription, to be refused), and a
// refusal fails init with the host's code.
//
// Threading as plugin.h: one call at a time.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "sluice/plugin.hpp"

namespace {

class Ignore : public sluice::sdk::Plugin {
 public:
  int Init(const sluice::sdk::InitInfo& info) override {
    sleep_ms_ = info.config.value("sleep_ms", 0);
    slow_prefix_ = info.config.value("slow_prefix", "");
    if (info.config.contains("types")) {
      return info.SetSubscriptionTypes(info.config.value("types_index", size_t{0}),
                                       info.config["types"].get<std::vector<std::string>>());
    }
    return 0;
  }

  sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& /*ctx*/) override {
    if (sleep_ms_ > 0 && m.payload().substr(0, slow_prefix_.size()) == slow_prefix_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    }
    return sluice::sdk::Result::Ok();
  }

 private:
  int sleep_ms_ = 0;
  std::string slow_prefix_;
};

const sluice_subscription kSubs[] = {{"in", "ignore", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};

}  // namespace

SLUICE_PLUGIN_NO_PUBLISHES(Ignore, "ignore", "1.0", kSubs)
