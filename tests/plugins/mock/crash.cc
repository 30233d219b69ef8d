// SPDX-License-Identifier: MIT
//
// Test plugin: payload "crash" kills the worker with SIGSEGV inside handle(); a payload starting with
// "quiet" succeeds without any effect (the worker acks it instead of sending a bundle); anything else
// counts in "count" and succeeds. Poison detection must dead-letter the crashing message after
// max_crashes, and only it.
#include <signal.h>

#include <string>

#include "sluice/plugin.hpp"

namespace {

class Crash : public sluice::sdk::Plugin {
 public:
  sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& ctx) override {
    if (m.payload() == "crash") raise(SIGSEGV);
    if (m.payload().substr(0, 5) == "quiet") return sluice::sdk::Result::Ok();
    auto seen = ctx.Get("count");
    ctx.Put("count", std::to_string((seen ? std::stol(*seen) : 0) + 1));
    return sluice::sdk::Result::Ok();
  }
};

const sluice_subscription kSubs[] = {{"in", "crash", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};

}  // namespace

SLUICE_PLUGIN_NO_PUBLISHES(Crash, "crash", "1.0", kSubs)
