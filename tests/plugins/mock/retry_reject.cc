// SPDX-License-Identifier: MIT
//
// Test plugin: payload "retry" asks for a redelivery after 50 ms, "reject" dead-letters the message
// with the reason "rejected: bad input"; anything else counts in "count" and succeeds.
#include <chrono>
#include <string>

#include "sluice/plugin.hpp"

namespace {

class RetryReject : public sluice::sdk::Plugin {
 public:
  sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& ctx) override {
    if (m.payload() == "retry") return sluice::sdk::Result::Retry(std::chrono::milliseconds(50), "try again");
    if (m.payload() == "reject") return sluice::sdk::Result::Reject("rejected: bad input");
    auto seen = ctx.Get("count");
    ctx.Put("count", std::to_string((seen ? std::stol(*seen) : 0) + 1));
    return sluice::sdk::Result::Ok();
  }
};

const sluice_subscription kSubs[] = {{"in", "retry_reject", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};

}  // namespace

SLUICE_PLUGIN_NO_PUBLISHES(RetryReject, "retry_reject", "1.0", kSubs)
