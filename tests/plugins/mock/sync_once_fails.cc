// SPDX-License-Identifier: MIT
//
// Test plugin with a sync() callback (ABI 1.1): handle() counts in "count" and succeeds; sync() fails
// the first time it is called and logs how many messages each later sync covered ("sync covered N").
// The host must retry every message of the failed sync without committing their bundles (so "count"
// ends equal to the number of messages), and cover a backlog with few syncs.
#include <cerrno>
#include <string>

#include "sluice/plugin.hpp"

namespace {

class SyncOnceFails : public sluice::sdk::Plugin {
 public:
  int Init(const sluice::sdk::InitInfo& info) override {
    api_ = info.api;
    return 0;
  }
  sluice::sdk::Result Handle(const sluice::sdk::Message& /*m*/, sluice::sdk::Context& ctx) override {
    auto seen = ctx.Get("count");
    ctx.Put("count", std::to_string((seen ? std::stol(*seen) : 0) + 1));
    ++unsynced_;
    return sluice::sdk::Result::Ok();
  }
  int Sync() {
    int covered = unsynced_;
    unsynced_ = 0;
    if (!failed_once_) {
      failed_once_ = true;
      return -EIO;
    }
    api_->log(nullptr, SLUICE_LOG_NOTICE, ("sync covered " + std::to_string(covered)).c_str());
    return 0;
  }

 private:
  const sluice_host_api* api_ = nullptr;
  int unsynced_ = 0;
  bool failed_once_ = false;
};

const sluice_subscription kSubs[] = {
    {"in", "sync_once_fails", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};

}  // namespace

SLUICE_PLUGIN_NO_PUBLISHES(SyncOnceFails, "sync_once_fails", "1.0", kSubs)
