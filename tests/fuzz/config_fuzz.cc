// SPDX-License-Identifier: MIT
//
// libFuzzer target for the config loader (daemon/config.h) and the unit parsers (daemon/units.h). The
// input is the text of a config file. Besides "never crash, never leak", it checks the properties the
// loader promises: a config that parses prints (FormatConfig) as TOML that parses back to an equal
// config with no DiffConfig changes; a rejected config has a non-empty message naming the file; and
// the input read as a size, a duration or a timestamp reads back the same after printing. A broken
// property traps, so libFuzzer keeps the input. Single-threaded, as libFuzzer calls it.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "daemon/config.h"
#include "daemon/units.h"

namespace sluice {
namespace {

constexpr std::string_view kName = "fuzz.toml";

[[noreturn]] void Fail(const char* what, std::string_view detail) {
  std::fprintf(stderr, "config_fuzz: %s\n%.*s\n", what, static_cast<int>(detail.size()), detail.data());
  __builtin_trap();
}

void CheckConfig(std::string_view text) {
  Result<Config> config = ParseConfig(text, kName);
  if (!config.ok()) {
    const std::string& message = config.status().message();
    if (config.status().code() != StatusCode::kInvalidArgument || !message.starts_with(kName)) {
      Fail("an error that does not name the file", message);
    }
    return;
  }
  const std::string printed = FormatConfig(*config);
  Result<Config> back = ParseConfig(printed, kName);
  if (!back.ok())
    Fail("FormatConfig printed a config that does not parse", back.status().message() + "\n" + printed);
  if (!(*back == *config)) Fail("FormatConfig does not round-trip", printed);
  if (!DiffConfig(*config, *back).empty()) Fail("DiffConfig sees a change between equal configs", printed);
}

void CheckUnits(std::string_view text) {
  if (Result<uint64_t> size = ParseSize(text); size.ok()) {
    Result<uint64_t> again = ParseSize(FormatSize(*size));
    if (!again.ok() || *again != *size) Fail("FormatSize does not round-trip", text);
  }
  if (Result<Duration> d = ParseDuration(text); d.ok()) {
    Result<Duration> again = ParseDuration(FormatDuration(*d));
    if (!again.ok() || *again != *d) Fail("FormatDuration does not round-trip", text);
  }
  if (Result<int64_t> t = ParseTimestamp(text); t.ok()) {
    Result<int64_t> again = ParseTimestamp(FormatTimestamp(*t));
    if (!again.ok() || *again != *t) Fail("FormatTimestamp does not round-trip", text);
  }
}

}  // namespace
}  // namespace sluice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  sluice::CheckConfig(text);
  // Unit strings are short; a long input would only spend the fuzzer's time on digits.
  if (size <= 64) sluice::CheckUnits(text);
  return 0;
}
