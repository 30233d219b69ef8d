/* SPDX-License-Identifier: MIT
 *
 * Test plugin: a descriptor that claims ABI 2.0, which this host (1.2) must refuse with a message
 * naming the file and both versions. Nothing in it is ever called.
 */
#include "sluice/plugin.h"

static sluice_result Handle(void* state, const sluice_message* message, sluice_context* ctx) {
  (void)state;
  (void)message;
  (void)ctx;
  sluice_result r = {SLUICE_OK, 0, 0};
  return r;
}

static const sluice_subscription kSubs[] = {
    {"in", "wrong_abi", SLUICE_START_EARLIEST, SLUICE_ORDERING_NONE, 0, 0, 0},
};

SLUICE_PLUGIN_EXPORT const sluice_plugin* sluice_plugin_entry(void) {
  static const sluice_plugin kDescriptor = {
      2, 0, sizeof(sluice_plugin), "wrong_abi", "1.0", kSubs, 1, 0, 0, 0, Handle, 0, 0,
  };
  return &kDescriptor;
}
