// SPDX-License-Identifier: MIT
//
// What every sluicectl command shares: its exit codes (documented in sluicectl(1)) and how a human
// table is printed. Plain functions on stdout; single-threaded.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnreachable = 3;

// Rows as left-aligned columns under a header.
void PrintTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);
// A JSON scalar as a table cell: strings bare, floats with one decimal.
std::string Cell(const nlohmann::json& j);
// 42.0 -> "42.0s", 4000 -> "1h06m".
std::string HumanSeconds(double seconds);

}  // namespace sluice::ctl
