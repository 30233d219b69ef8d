// SPDX-License-Identifier: MIT
//
// Tests of plugin loading (daemon/plugin_loader.h): the test plugins of tests/plugins/mock load or are
// refused with a message naming the file and the problem, and CheckDescriptor applies every rule to
// hand-built descriptors. Single-threaded; the plugins are dlopen()ed into the test process.
#include "daemon/plugin_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>

#ifndef SLUICE_MOCK_PLUGIN_DIR
#error "SLUICE_MOCK_PLUGIN_DIR must name the test plugins' build folder"
#endif

namespace sluice {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Mock(const char* name) { return std::string(SLUICE_MOCK_PLUGIN_DIR) + "/" + name + ".so"; }

sluice_result Handle(void*, const sluice_message*, sluice_context*) { return {SLUICE_OK, 0, nullptr}; }

const sluice_subscription kSubs[] = {{"orders", "mail", SLUICE_START_LATEST, SLUICE_ORDERING_KEY, 3, 500, 0}};
const char* const kPublishes[] = {"mails"};

sluice_plugin Good() {
  return {SLUICE_PLUGIN_ABI_MAJOR, SLUICE_PLUGIN_ABI_MINOR, sizeof(sluice_plugin), "mail", "2.1", kSubs, 1,
          kPublishes, 1, nullptr, Handle, nullptr};
}

std::string Refusal(const sluice_plugin& d) {
  PluginDescriptor out;
  out.name = "untouched";
  Status st = CheckDescriptor(&d, "/x/p.so", &out);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(out.name, "untouched");  // the output is left alone on failure
  return st.message();
}

TEST(PluginLoaderTest, LoadsAGoodPlugin) {
  auto p = LoadedPlugin::Load(Mock("ok"));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const PluginDescriptor& d = (*p)->descriptor();
  EXPECT_EQ(d.name, "ok");
  EXPECT_EQ(d.version, "1.0");
  ASSERT_EQ(d.subscriptions.size(), 1u);
  EXPECT_EQ(d.subscriptions[0].topic, "in");
  EXPECT_EQ(d.subscriptions[0].name, "ok");
  EXPECT_EQ(d.subscriptions[0].start, SLUICE_START_EARLIEST);
  EXPECT_EQ(d.subscriptions[0].prefetch, 64u);  // 0 in the descriptor: the default
  EXPECT_THAT(d.publishes, ElementsAre("out"));
  EXPECT_NE((*p)->callbacks().handle, nullptr);
  EXPECT_NE((*p)->callbacks().init, nullptr);
}

TEST(PluginLoaderTest, RefusesAnotherAbiNamingTheFile) {
  auto p = LoadedPlugin::Load(Mock("wrong_abi"));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(), Mock("wrong_abi") + ": plugin ABI 2.0 is not supported (host speaks 1.2)");
}

TEST(PluginLoaderTest, RefusesALibraryWithoutTheEntryPoint) {
  auto p = LoadedPlugin::Load(Mock("no_entry"));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(),
            Mock("no_entry") + ": no sluice_plugin_entry symbol (export it with SLUICE_PLUGIN_EXPORT)");
}

TEST(PluginLoaderTest, RefusesAMissingFileOnce) {
  const std::string path = Mock("does_not_exist");
  auto p = LoadedPlugin::Load(path);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(),
            path + ": cannot load: cannot open shared object file: No such file or directory");
}

TEST(CheckDescriptorTest, AcceptsAndCopies) {
  sluice_plugin d = Good();
  PluginDescriptor out;
  ASSERT_TRUE(CheckDescriptor(&d, "/x/p.so", &out).ok());
  EXPECT_EQ(out.name, "mail");
  EXPECT_EQ(out.version, "2.1");
  ASSERT_EQ(out.subscriptions.size(), 1u);
  EXPECT_EQ(out.subscriptions[0].ordering, SLUICE_ORDERING_KEY);
  EXPECT_EQ(out.subscriptions[0].max_deliveries, 3u);
  EXPECT_EQ(out.subscriptions[0].ack_wait_ms, 500u);
  EXPECT_THAT(out.publishes, ElementsAre("mails"));
}

TEST(CheckDescriptorTest, NamesEveryProblem) {
  PluginDescriptor out;
  EXPECT_EQ(CheckDescriptor(nullptr, "/x/p.so", &out).message(),
            "/x/p.so: sluice_plugin_entry() returned no descriptor");

  sluice_plugin d = Good();
  d.abi_minor = SLUICE_PLUGIN_ABI_MINOR + 1;
  EXPECT_EQ(Refusal(d), "/x/p.so: plugin ABI 1.3 is not supported (host speaks 1.2)");
  d = Good();
  d.abi_major = 0;
  EXPECT_EQ(Refusal(d), "/x/p.so: plugin ABI 0.2 is not supported (host speaks 1.2)");
  d = Good();
  d.struct_size = 16;
  EXPECT_THAT(Refusal(d), StartsWith("/x/p.so: descriptor struct_size 16 is smaller than the "));
  d = Good();
  d.name = nullptr;
  EXPECT_EQ(Refusal(d), "/x/p.so: the descriptor has no name");
  d.name = "Mail";
  EXPECT_EQ(Refusal(d), "/x/p.so: plugin name \"Mail\" is not valid (1 to 64 characters of a-z 0-9 _ -)");
  d.name = "";
  EXPECT_THAT(Refusal(d), HasSubstr("plugin name \"\" is not valid"));
  d = Good();
  d.handle = nullptr;
  EXPECT_EQ(Refusal(d), "/x/p.so: the descriptor has no handle() callback");
  d = Good();
  d.n_subscriptions = 0;
  EXPECT_EQ(Refusal(d), "/x/p.so: the plugin declares no subscription (it would never be called)");
  d = Good();
  d.n_publishes = 2;
  d.publishes = nullptr;
  EXPECT_EQ(Refusal(d), "/x/p.so: n_publishes is 2 but publishes is NULL");

  sluice_subscription subs[2] = {kSubs[0], kSubs[0]};
  d = Good();
  d.subscriptions = subs;
  d.n_subscriptions = 2;
  EXPECT_EQ(Refusal(d), "/x/p.so: subscription 2 repeats orders/mail");
  subs[1].topic = nullptr;
  EXPECT_EQ(Refusal(d), "/x/p.so: subscription 2 has no topic");
  subs[1].topic = "a b";
  EXPECT_EQ(Refusal(d), "/x/p.so: subscription 2: topic \"a b\" is not a valid topic name");
  subs[1].topic = "other";
  subs[1].name = nullptr;
  EXPECT_EQ(Refusal(d), "/x/p.so: subscription 2 has no subscription name");
  subs[1].name = "x";
  subs[1].ordering = static_cast<sluice_ordering>(9);
  EXPECT_EQ(Refusal(d), "/x/p.so: subscription 2: unknown ordering 9");
  subs[1].ordering = SLUICE_ORDERING_NONE;
  subs[1].start = static_cast<sluice_start>(4);
  EXPECT_EQ(Refusal(d), "/x/p.so: subscription 2: unknown start 4");

  const char* const bad_publishes[] = {"fine", nullptr};
  d = Good();
  d.publishes = bad_publishes;
  d.n_publishes = 2;
  EXPECT_EQ(Refusal(d), "/x/p.so: publish topic 2 (null) is not a valid topic name");
}

TEST(CheckDescriptorTest, FieldsPastTheStructSizeReadAsZero) {
  // A descriptor of exactly ABI 1.0's size is accepted; one whose size stops before `shutdown` is not
  // (1.0 has that field), and a larger one (a later minor's) is read up to what this host knows.
  sluice_plugin d = Good();
  d.struct_size = sizeof(sluice_plugin) + 64;
  PluginDescriptor out;
  EXPECT_TRUE(CheckDescriptor(&d, "/x/p.so", &out).ok());
  d.struct_size = offsetof(sluice_plugin, shutdown);
  EXPECT_THAT(Refusal(d), HasSubstr("is smaller than the"));
}

TEST(LoadedPluginTest, ASdkPluginWithoutASyncMethodHasNoSyncCallback) {
  // The worker batches bundles only for plugins that have sync(); the others commit each at once.
  auto p = LoadedPlugin::Load(Mock("ok"));
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ((*p)->callbacks().sync, nullptr);
  // It declares the lowest minor it needs, so it also loads on a 1.0 host.
  EXPECT_EQ((*p)->descriptor().abi_minor, 0u);

  auto with_sync = LoadedPlugin::Load(Mock("sync_once_fails"));
  ASSERT_TRUE(with_sync.ok()) << with_sync.status().message();
  EXPECT_NE((*with_sync)->callbacks().sync, nullptr);
  EXPECT_EQ((*with_sync)->descriptor().abi_minor, 1u);
}

}  // namespace
}  // namespace sluice
