// SPDX-License-Identifier: MIT
//
// A test plugin whose handler has no effect: it subscribes to "in" as "ignore" and returns OK without
// reading, writing, publishing or replying, as Notification does for a mail or Inventory for an event
// it does not act on. The host acks such a message instead of committing a bundle (worker.cc,
// AckOnly), which the plugin host test checks with the broker's bundle counter.
//
// Threading as plugin.h: one call at a time.
#include "sluice/plugin.hpp"

namespace {

class Ignore : public sluice::sdk::Plugin {
 public:
  sluice::sdk::Result Handle(const sluice::sdk::Message& /*m*/, sluice::sdk::Context& /*ctx*/) override {
    return sluice::sdk::Result::Ok();
  }
};

const sluice_subscription kSubs[] = {{"in", "ignore", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};

}  // namespace

SLUICE_PLUGIN_NO_PUBLISHES(Ignore, "ignore", "1.0", kSubs)
