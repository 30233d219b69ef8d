// SPDX-License-Identifier: MIT
//
// Test plugin: declares "out" but publishes to "secret". The host refuses the publish (-EPERM) and
// the plugin rejects the message saying so, so it lands in the dead-letter queue with that reason.
#include <string>

#include "sluice/plugin.hpp"

namespace {

class Undeclared : public sluice::sdk::Plugin {
 public:
  sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& ctx) override {
    int rc = ctx.Publish({.topic = "secret", .type = "mock.Out", .payload = m.payload()});
    if (rc != 0) return sluice::sdk::Result::Reject("publish to secret refused: " + std::to_string(rc));
    return sluice::sdk::Result::Ok();
  }
};

const sluice_subscription kSubs[] = {{"in", "undeclared", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0}};
const char* const kPublishes[] = {"out"};

}  // namespace

SLUICE_PLUGIN(Undeclared, "undeclared", "1.0", kSubs, kPublishes)
