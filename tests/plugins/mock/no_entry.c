/* SPDX-License-Identifier: MIT
 *
 * Test plugin: a library without sluice_plugin_entry (it exports another name), which the host must
 * refuse with a message naming the file and the missing symbol.
 */
#include "sluice/plugin.h"

SLUICE_PLUGIN_EXPORT int sluice_plugin_entry_point_misspelled(void) { return 0; }
