// SPDX-License-Identifier: MIT
//
// The well-behaved test plugin, built in several variants from this one file (see meson.build): per
// input it reads the key "count" of its keyspace, writes it back plus one (so a lost update or a
// double effect shows in the count), remembers the input's payload under "seen/<payload>", publishes
// one message to its output topic with the input's key and payload, and answers a request with
// "ok:<payload>". Config: {"fail_init": true} makes init() fail (for restart tests). The benchmark
// variant (MOCK_BENCH) reads and writes one key per message key, "k/<key>", and nothing else, so
// competing workers race only on messages with the same key.
//
// Threading as plugin.h: one call at a time.
#include <string>

#include "sluice/plugin.hpp"

#ifndef MOCK_NAME
#error "MOCK_NAME, MOCK_IN, MOCK_SUB, MOCK_OUT and MOCK_START are set by meson.build"
#endif

namespace {

class Counter : public sluice::sdk::Plugin {
 public:
  int Init(const sluice::sdk::InitInfo& info) override {
    if (info.config.value("fail_init", false)) {
      // Two lines: the host shows them as one.
      info.Log(SLUICE_LOG_ERROR, "config.fail_init is set:\nrefusing to start");
      return -5;  // EIO
    }
    return 0;
  }

  sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& ctx) override {
#ifdef MOCK_BENCH
    const std::string key = "k/" + std::string(m.key());
#else
    const std::string key = "count";
#endif
    auto seen = ctx.Get(key);
    long n = seen ? std::stol(*seen) : 0;
    ctx.Put(key, std::to_string(n + 1));
#ifndef MOCK_BENCH
    if (!m.payload().empty() && m.payload().size() < 300) ctx.Put("seen/" + std::string(m.payload()), "1");
#endif
    ctx.Publish({.topic = MOCK_OUT, .key = m.key(), .type = "mock.Out", .payload = m.payload()});
    if (m.is_request()) ctx.Reply({.type = "mock.Reply", .payload = "ok:" + std::string(m.payload())});
    return sluice::sdk::Result::Ok();
  }
};

#ifndef MOCK_PREFETCH
#define MOCK_PREFETCH 0
#endif
const sluice_subscription kSubs[] = {{MOCK_IN, MOCK_SUB, MOCK_START, SLUICE_ORDERING_NONE, 0, 0, MOCK_PREFETCH}};
const char* const kPublishes[] = {MOCK_OUT};

}  // namespace

SLUICE_PLUGIN(Counter, MOCK_NAME, "1.0", kSubs, kPublishes)
