// SPDX-License-Identifier: MIT
//
// Test plugin: payload "hang" never returns from handle() (the watchdog must kill the worker after
// handler_timeout); anything else counts in "count" and succeeds.
#include <string>

#include "sluice/plugin.hpp"

namespace {

class Hang : public sluice::sdk::Plugin {
 public:
  sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& ctx) override {
    if (m.payload() == "hang") {
      volatile bool forever = true;
      while (forever) {
      }
    }
    auto seen = ctx.Get("count");
    ctx.Put("count", std::to_string((seen ? std::stol(*seen) : 0) + 1));
    return sluice::sdk::Result::Ok();
  }
};

const sluice_subscription kSubs[] = {{"in", "hang", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};

}  // namespace

SLUICE_PLUGIN_NO_PUBLISHES(Hang, "hang", "1.0", kSubs)
