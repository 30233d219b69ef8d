// SPDX-License-Identifier: MIT
//
// The config loader (config.h): the only file that sees toml++. Every accepted key is one line in a
// declarative table (DaemonKeys(), BrokerKeys(), TopicKeys(), SubscriptionKeys(), PluginKeys()) that
// says how the key is read, checked, printed and whether changing it needs a restart; the loader, FormatConfig,
// DiffConfig and KnownConfigKeys() all walk those tables, so a new key cannot be parsed without also
// being printed, diffed and listed. Sections are a second table (Sections()), so a new [section] or
// [[array]] is one entry there.
//
// Failure modes: a file that cannot be read ("FILE: cannot read: <strerror>"), a TOML syntax error
// ("FILE:LINE:COL: syntax error: ..."), and per value "FILE:LINE: KEY: problem" for an unknown key, a
// wrong type, a bad enum/size/duration/time, a value out of range, a missing required key, two keys
// that contradict each other and a duplicate [[topic]] or [[subscription]]. All value errors of all
// files are collected (sorted by file and line, at most kMaxReportedErrors shown) into one
// kInvalidArgument Status, one error per line, so an operator fixes them in one pass.
//
// Library caveats relied on: toml++ 3.x built with exceptions (Debian's is) reports syntax errors by
// throwing toml::parse_error, caught here; it bounds nesting depth itself; its tables iterate in key
// order, not file order, which is why errors are sorted by line before they are reported.
//
// Thread-safe: no mutable state; the key tables are immutable function-local statics.
#include "daemon/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <sstream>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

namespace sluice {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxReportedErrors = 20;
constexpr size_t kMaxConfigFileBytes = 16 << 20;
constexpr size_t kMaxNameLength = 200;

// ---- Locations and errors ----

// Where a value was written. `order` is the position of the file in the load order, so that "set
// later" can be decided across files.
struct Location {
  std::string file;
  size_t order = 0;
  uint32_t line = 0;  // 0: unknown (a built-in default)

  std::string ToString() const { return line == 0 ? file : fmt::format("{}:{}", file, line); }
  bool After(const Location& other) const {
    return std::tie(order, line) > std::tie(other.order, other.line);
  }
};

struct ConfigError {
  Location where;
  uint32_t column = 0;
  std::string text;  // "KEY: problem" or "syntax error: ..."
  std::string key;   // empty for a syntax error
};

// What a key's parser needs besides the value: the folder of the file, for relative paths.
struct ValueContext {
  fs::path base_dir;
};

// A value's problem in words ("0 is out of range (1..65536)"); nullopt when it was accepted.
using Problem = std::optional<std::string>;

std::string TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

std::string Expected(std::string_view what, const toml::node& node) {
  return fmt::format("expected {}, got {}", what, TypeName(node));
}

// A TOML basic string literal. Control characters (which TOML forbids raw) are escaped; other bytes
// pass through, as every string here came from a TOML document and is UTF-8 already.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          out += fmt::format("\\u{:04X}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

// Shortest text that reads back to the same double, always recognisable as a TOML float.
std::string FormatFloat(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

Problem CheckName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || !std::all_of(name.begin(), name.end(), IsNameChar)) {
    return fmt::format("{} is not a valid name (1 to {} characters of A-Z a-z 0-9 . _ -)", Quote(name),
                       kMaxNameLength);
  }
  return std::nullopt;
}

constexpr size_t kMaxPluginNameLength = 64;

// A plugin name is also its keyspace and the file name of its default path, so it is narrower than a
// topic name: the ABI's [a-z0-9_-]{1,64}.
Problem CheckPluginName(std::string_view name) {
  auto ok = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'; };
  if (name.empty() || name.size() > kMaxPluginNameLength || !std::all_of(name.begin(), name.end(), ok)) {
    return fmt::format("{} is not a valid plugin name (1 to {} characters of a-z 0-9 _ -)", Quote(name),
                       kMaxPluginNameLength);
  }
  return std::nullopt;
}

// A plugin's `config` table travels to the plugin as JSON. TOML dates and times become their RFC 3339
// text; a non-finite float has no JSON form and is refused.
Problem TomlToJson(const toml::node& node, nlohmann::json& out) {
  if (const auto* t = node.as_table()) {
    out = nlohmann::json::object();
    for (auto&& [k, v] : *t) {
      nlohmann::json child;
      if (Problem p = TomlToJson(v, child)) return p;
      out[std::string(k.str())] = std::move(child);
    }
    return std::nullopt;
  }
  if (const auto* a = node.as_array()) {
    out = nlohmann::json::array();
    for (const toml::node& v : *a) {
      nlohmann::json child;
      if (Problem p = TomlToJson(v, child)) return p;
      out.push_back(std::move(child));
    }
    return std::nullopt;
  }
  if (const auto* v = node.as_string()) {
    out = v->get();
  } else if (const auto* i = node.as_integer()) {
    out = i->get();
  } else if (const auto* f = node.as_floating_point()) {
    if (!std::isfinite(f->get())) return "inf and nan have no JSON form";
    out = f->get();
  } else if (const auto* b = node.as_boolean()) {
    out = b->get();
  } else {
    std::ostringstream text;
    if (const auto* d = node.as_date()) text << d->get();
    if (const auto* tm = node.as_time()) text << tm->get();
    if (const auto* dt = node.as_date_time()) text << dt->get();
    out = text.str();
  }
  return std::nullopt;
}

// The inverse for FormatConfig and DiffConfig: a JSON value as a TOML inline value.
std::string JsonToToml(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::object: {
      std::string out = "{";
      for (auto it = j.begin(); it != j.end(); ++it) {
        out += fmt::format("{}{} = {}", out.size() > 1 ? ", " : " ", Quote(it.key()), JsonToToml(it.value()));
      }
      return out + (out.size() > 1 ? " }" : "}");
    }
    case nlohmann::json::value_t::array: {
      std::string out = "[";
      for (const auto& v : j) out += (out.size() > 1 ? ", " : "") + JsonToToml(v);
      return out + "]";
    }
    case nlohmann::json::value_t::string: return Quote(j.get_ref<const std::string&>());
    case nlohmann::json::value_t::boolean: return j.get<bool>() ? "true" : "false";
    case nlohmann::json::value_t::number_integer: return fmt::format("{}", j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: return fmt::format("{}", j.get<uint64_t>());
    case nlohmann::json::value_t::number_float: return FormatFloat(j.get<double>());
    default: return "\"\"";
  }
}

// Edit distance, for "did you mean" on unknown keys. Key names are short, so O(n*m) is nothing.
size_t Distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// ---- The key table ----

// One accepted key of a section whose values live in an S. `text` is the human form of the current
// value ("64MiB", "sync", "0o660") as DiffConfig shows it; FormatConfig writes it as a TOML string
// when `quoted`, else as is.
template <typename S>
struct KeyDef {
  std::string_view name;
  bool required = false;
  bool needs_restart = false;
  bool quoted = false;
  std::function<Problem(const toml::node&, const ValueContext&, S&)> parse;
  std::function<std::string(const S&)> text;

  KeyDef Restart() const {
    KeyDef copy = *this;
    copy.needs_restart = true;
    return copy;
  }
  KeyDef Required() const {
    KeyDef copy = *this;
    copy.required = true;
    return copy;
  }
};

template <typename T>
struct EnumName {
  std::string_view name;
  T value;
};

constexpr EnumName<LogLevel> kLogLevels[] = {{"error", LogLevel::kError},
                                             {"warning", LogLevel::kWarning},
                                             {"notice", LogLevel::kNotice},
                                             {"info", LogLevel::kInfo},
                                             {"debug", LogLevel::kDebug}};
constexpr EnumName<Durability> kDurabilities[] = {
    {"sync", Durability::kSync}, {"batch", Durability::kBatch}, {"none", Durability::kNone}};
constexpr EnumName<TopicFullPolicy> kTopicFullPolicies[] = {{"reject", TopicFullPolicy::kReject},
                                                            {"drop_oldest", TopicFullPolicy::kDropOldest}};
constexpr EnumName<BacklogFullPolicy> kBacklogFullPolicies[] = {{"block", BacklogFullPolicy::kBlock},
                                                                {"skip", BacklogFullPolicy::kSkip}};
constexpr EnumName<OrderingMode> kOrderingModes[] = {{"none", OrderingMode::kNone},
                                                     {"key", OrderingMode::kKey}};

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr int64_t kNoMax = std::numeric_limits<int64_t>::max();
constexpr uint64_t kNoSizeMax = std::numeric_limits<uint64_t>::max();
constexpr Duration kNoDurationMax = Duration::max();

template <typename Range, typename Print>
std::string OutOfRange(const Range& value, const Range& min, const Range& max, const Range& no_max,
                       Print print) {
  if (max == no_max) return fmt::format("{} is out of range (>= {})", print(value), print(min));
  return fmt::format("{} is out of range ({}..{})", print(value), print(min), print(max));
}

// The factories that make a KeyDef<S> for one kind of value. `field` is a member pointer
// (&DaemonConfig::data_dir) or a generic lambda returning a reference to the field (for nested
// members), so every table line is one call.
template <typename S>
struct Keys {
  using Def = KeyDef<S>;
  template <typename A>
  using Field = std::remove_cvref_t<std::invoke_result_t<A, S&>>;

  template <typename A>
  static Def Path(std::string_view name, A field) {
    Def d;
    d.name = name;
    d.quoted = true;
    d.parse = [field](const toml::node& node, const ValueContext& context, S& s) -> Problem {
      const auto* v = node.as_string();
      if (v == nullptr) return Expected("a path string", node);
      const std::string& text = v->get();
      if (text.empty()) return "must not be empty";
      if (text.find('\0') != std::string::npos) return "contains a NUL character";
      fs::path p(text);
      // Relative paths are relative to the file that says them, not to the daemon's working folder.
      std::invoke(field, s) = p.is_absolute() ? p : (context.base_dir / p).lexically_normal();
      return std::nullopt;
    };
    d.text = [field](const S& s) { return std::invoke(field, s).string(); };
    return d;
  }

  template <typename A>
  static Def String(std::string_view name, A field) {
    Def d;
    d.name = name;
    d.quoted = true;
    d.parse = [field](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* v = node.as_string();
      if (v == nullptr) return Expected("a string", node);
      if (v->get().find('\0') != std::string::npos) return "contains a NUL character";
      std::invoke(field, s) = v->get();
      return std::nullopt;
    };
    d.text = [field](const S& s) { return std::invoke(field, s); };
    return d;
  }

  // A listen address for an HTTP server: ParseListenAddress's forms, or "" for none.
  template <typename A>
  static Def Listen(std::string_view name, A field) {
    Def d = String(name, field);
    d.parse = [field](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* v = node.as_string();
      if (v == nullptr) return Expected("a string such as \"127.0.0.1:9464\"", node);
      const std::string& text = v->get();
      if (!text.empty() && !ParseListenAddress(text)) {
        return fmt::format("\"{}\" is not HOST:PORT with an IP address and a port of 0..65535 "
                           "(\"127.0.0.1:9464\", \"[::1]:9464\"; no host names)",
                           text);
      }
      std::invoke(field, s) = text;
      return std::nullopt;
    };
    return d;
  }

  // A topic or subscription name: [A-Za-z0-9._-]{1,200}.
  template <typename A>
  static Def Name(std::string_view name, A field) {
    Def d;
    d.name = name;
    d.quoted = true;
    d.parse = [field](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* v = node.as_string();
      if (v == nullptr) return Expected("a name string", node);
      if (Problem p = CheckName(v->get())) return p;
      std::invoke(field, s) = v->get();
      return std::nullopt;
    };
    d.text = [field](const S& s) { return std::invoke(field, s); };
    return d;
  }

  template <typename A>
  static Def Bool(std::string_view name, A field) {
    Def d;
    d.name = name;
    d.parse = [field](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* v = node.as_boolean();
      if (v == nullptr) return Expected("true or false", node);
      std::invoke(field, s) = v->get();
      return std::nullopt;
    };
    d.text = [field](const S& s) -> std::string { return std::invoke(field, s) ? "true" : "false"; };
    return d;
  }

  template <typename A>
  static Def Int(std::string_view name, A field, int64_t min, int64_t max) {
    static_assert(std::is_unsigned_v<Field<A>>);
    Def d;
    d.name = name;
    d.parse = [field, min, max](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* v = node.as_integer();
      if (v == nullptr) return Expected("an integer", node);
      const int64_t x = v->get();
      if (x < min || x > max) {
        return OutOfRange(x, min, max, kNoMax, [](int64_t i) { return fmt::format("{}", i); });
      }
      std::invoke(field, s) = static_cast<Field<A>>(x);
      return std::nullopt;
    };
    d.text = [field](const S& s) { return fmt::format("{}", std::invoke(field, s)); };
    return d;
  }

  // Permission bits, written and printed in octal (0o660).
  template <typename A>
  static Def Mode(std::string_view name, A field) {
    Def d;
    d.name = name;
    d.parse = [field](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* v = node.as_integer();
      if (v == nullptr) return Expected("an integer such as 0o660", node);
      const int64_t x = v->get();
      if (x < 0 || x > 0777) {
        // TOML has no leading-zero octal: 660 is decimal (0o1224), so say both.
        if (x < 0) return fmt::format("{} is out of range (0o0..0o777)", x);
        return fmt::format("{} (0o{:o}) is out of range (0o0..0o777; write octal as 0o660)", x, x);
      }
      std::invoke(field, s) = static_cast<Field<A>>(x);
      return std::nullopt;
    };
    d.text = [field](const S& s) { return fmt::format("0o{:o}", std::invoke(field, s)); };
    return d;
  }

  // A size string ("64MiB") or a plain integer number of bytes.
  template <typename A>
  static Def Size(std::string_view name, A field, uint64_t min, uint64_t max = kNoSizeMax) {
    Def d;
    d.name = name;
    d.quoted = true;
    d.parse = [field, min, max](const toml::node& node, const ValueContext&, S& s) -> Problem {
      uint64_t bytes = 0;
      if (const auto* i = node.as_integer()) {
        if (i->get() < 0) return fmt::format("{}: negative size", i->get());
        bytes = static_cast<uint64_t>(i->get());
      } else if (const auto* str = node.as_string()) {
        Result<uint64_t> parsed = ParseSize(str->get());
        if (!parsed.ok()) return parsed.status().message();
        bytes = *parsed;
      } else {
        return Expected("a size such as \"64MiB\" or a number of bytes", node);
      }
      if (bytes < min || bytes > max) return OutOfRange(bytes, min, max, kNoSizeMax, FormatSize);
      std::invoke(field, s) = static_cast<Field<A>>(bytes);
      return std::nullopt;
    };
    d.text = [field](const S& s) { return FormatSize(std::invoke(field, s)); };
    return d;
  }

  // A duration string ("30s"). A bare integer is refused: its unit would be a guess.
  template <typename A>
  static Def Dur(std::string_view name, A field, Duration min, Duration max = kNoDurationMax) {
    Def d;
    d.name = name;
    d.quoted = true;
    d.parse = [field, min, max](const toml::node& node, const ValueContext&, S& s) -> Problem {
      const auto* str = node.as_string();
      if (str == nullptr) {
        if (const auto* i = node.as_integer()) {
          return fmt::format(
              "expected a duration string, got an integer (write \"{}s\" or \"{}ms\", with a unit)", i->get(),
              i->get());
        }
        return Expected("a duration string such as \"30s\"", node);
      }
      Result<Duration> parsed = ParseDuration(str->get());
      if (!parsed.ok()) return parsed.status().message();
      if (*parsed < min || *parsed > max)
        return OutOfRange(*parsed, min, max, kNoDurationMax, FormatDuration);
      std::invoke(field, s) = *parsed;
      return std::nullopt;
    };
    d.text = [field](const S& s) { return FormatDuration(std::invoke(field, s)); };
    return d;
  }

  template <typename A>
  static Def Float(std::string_view name, A field, double min, double max) {
    Def d;
    d.name = name;
    d.parse = [field, min, max](const toml::node& node, const ValueContext&, S& s) -> Problem {
      double x = 0;
      if (const auto* f = node.as_floating_point()) {
        x = f->get();
      } else if (const auto* i = node.as_integer()) {
        x = static_cast<double>(i->get());
      } else {
        return Expected("a number", node);
      }
      // Written so that NaN fails too.
      if (!(x >= min && x <= max)) {
        return fmt::format("{} is out of range ({}..{})", FormatFloat(x), FormatFloat(min), FormatFloat(max));
      }
      std::invoke(field, s) = x;
      return std::nullopt;
    };
    d.text = [field](const S& s) { return FormatFloat(std::invoke(field, s)); };
    return d;
  }

  template <typename A, typename E, size_t N>
  static Def Enum(std::string_view name, A field, const EnumName<E> (&names)[N]) {
    Def d;
    d.name = name;
    d.quoted = true;
    std::span<const EnumName<E>> all(names);
    d.parse = [field, all](const toml::node& node, const ValueContext&, S& s) -> Problem {
      std::string choices;
      for (const EnumName<E>& e : all) choices += (choices.empty() ? "" : ", ") + Quote(e.name);
      const auto* v = node.as_string();
      if (v == nullptr) return fmt::format("expected one of {}, got {}", choices, TypeName(node));
      for (const EnumName<E>& e : all) {
        if (e.name == v->get()) {
          std::invoke(field, s) = e.value;
          return std::nullopt;
        }
      }
      return fmt::format("expected one of {}, got {}", choices, Quote(v->get()));
    };
    d.text = [field, all](const S& s) -> std::string {
      for (const EnumName<E>& e : all) {
        if (e.value == std::invoke(field, s)) return std::string(e.name);
      }
      return fmt::format("{}", static_cast<int>(std::invoke(field, s)));
    };
    return d;
  }
};

// A subscription's start point: "latest", "earliest", "seq:N" or an RFC 3339 time (as a string or a
// TOML offset date-time).
Problem ParseStart(const toml::node& node, const ValueContext&, SubscriptionConfig& s) {
  constexpr std::string_view kChoices = "\"latest\", \"earliest\", \"seq:N\" or an RFC 3339 time";
  std::string text;
  if (const auto* dt = node.as_date_time()) {
    const toml::date_time& t = dt->get();
    if (!t.offset) return "a time needs a zone: end it with Z for UTC or an offset such as +02:00";
    const int offset = t.offset->minutes;
    text = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}{}{:02}:{:02}", t.date.year, t.date.month,
                       t.date.day, t.time.hour, t.time.minute, t.time.second, t.time.nanosecond,
                       offset < 0 ? '-' : '+', std::abs(offset) / 60, std::abs(offset) % 60);
  } else if (const auto* str = node.as_string()) {
    text = str->get();
  } else {
    return fmt::format("expected {}, got {}", kChoices, TypeName(node));
  }
  SubscriptionConfig parsed = s;
  parsed.start_seq = 0;
  parsed.start_time_us = 0;
  if (text == "latest") {
    parsed.start = StartPointKind::kLatest;
  } else if (text == "earliest") {
    parsed.start = StartPointKind::kEarliest;
  } else if (text.starts_with("seq:")) {
    std::string_view digits = std::string_view(text).substr(4);
    uint64_t seq = 0;
    if (digits.empty() ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return fmt::format("{}: expected a sequence number after \"seq:\"", Quote(text));
    }
    for (char c : digits) {
      if (__builtin_mul_overflow(seq, 10u, &seq) ||
          __builtin_add_overflow(seq, static_cast<uint64_t>(c - '0'), &seq)) {
        return fmt::format("{}: sequence number too large", Quote(text));
      }
    }
    parsed.start = StartPointKind::kSequence;
    parsed.start_seq = seq;
  } else if (!text.empty() && text[0] >= '0' && text[0] <= '9') {
    Result<int64_t> us = ParseTimestamp(text);
    if (!us.ok()) return us.status().message();
    parsed.start = StartPointKind::kTime;
    parsed.start_time_us = *us;
  } else {
    return fmt::format("expected {}, got {}", kChoices, Quote(text));
  }
  s = parsed;
  return std::nullopt;
}

std::string StartText(const SubscriptionConfig& s) {
  switch (s.start) {
    case StartPointKind::kLatest: return "latest";
    case StartPointKind::kEarliest: return "earliest";
    case StartPointKind::kSequence: return fmt::format("seq:{}", s.start_seq);
    case StartPointKind::kTime: return FormatTimestamp(s.start_time_us);
  }
  return "latest";
}

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::seconds;
constexpr Duration kDay = hours(24);

// ---- The tables: one line per key. Order is the order FormatConfig prints. ----

const std::vector<KeyDef<DaemonConfig>>& DaemonKeys() {
  using K = Keys<DaemonConfig>;
  using C = DaemonConfig;
  static const auto* const keys = new std::vector<KeyDef<C>>{
      K::Path("data_dir", &C::data_dir).Restart(),
      K::Path("broker_socket", &C::broker_socket).Restart(),
      K::Path("admin_socket", &C::admin_socket).Restart(),
      K::Mode("socket_mode", &C::socket_mode).Restart(),
      K::String("admin_group", &C::admin_group),
      K::Enum("log_level", &C::log_level, kLogLevels),
      K::Size("max_frame_bytes", &C::max_frame_bytes, kKiB, kGiB),
      K::Int("max_connections", &C::max_connections, 1, 65536),
      K::Dur("shutdown_timeout", &C::shutdown_timeout, Duration(0), kDay),
      K::Path("plugin_dir", &C::plugin_dir),
  };
  return *keys;
}

const std::vector<KeyDef<MetricsConfig>>& MetricsKeys() {
  using K = Keys<MetricsConfig>;
  using C = MetricsConfig;
  static const auto* const keys = new std::vector<KeyDef<C>>{
      K::Listen("listen", &C::listen).Restart(),
  };
  return *keys;
}

const std::vector<KeyDef<BrokerConfig>>& BrokerKeys() {
  using K = Keys<BrokerConfig>;
  using C = BrokerConfig;
  static const auto* const keys = new std::vector<KeyDef<C>>{
      K::Enum("durability", &C::durability, kDurabilities).Restart(),
      K::Dur("batch_interval", &C::batch_interval, milliseconds(1), seconds(10)).Restart(),
      K::Size("map_size", &C::map_size, kMiB).Restart(),
      K::Size("max_map_size", &C::max_map_size, kMiB).Restart(),
      K::Size("preallocate", &C::preallocate, 0, 1024 * kMiB).Restart(),
      K::Bool("auto_create_topics", &C::auto_create_topics).Restart(),
      K::Dur("dedupe_window", &C::dedupe_window, Duration(0), 7 * kDay).Restart(),
      K::Size("max_message_bytes", &C::max_message_bytes, kKiB, 256 * kMiB),
      K::Int("default_max_deliveries", &C::default_max_deliveries, 1, 1000),
      K::Dur("default_ack_wait", &C::default_ack_wait, milliseconds(100), kDay),
  };
  return *keys;
}

const std::vector<KeyDef<TopicConfig>>& TopicKeys() {
  using K = Keys<TopicConfig>;
  using C = TopicConfig;
  static const auto* const keys = new std::vector<KeyDef<C>>{
      K::Name("name", &C::name).Required().Restart(),
      K::Int("max_messages", &C::max_messages, 0, kNoMax).Restart(),
      K::Size("max_bytes", &C::max_bytes, 0).Restart(),
      K::Enum("on_full", &C::on_full, kTopicFullPolicies).Restart(),
      K::Dur("retention_max_age", &C::retention_max_age, Duration(0)).Restart(),
      K::Size("retention_max_bytes", &C::retention_max_bytes, 0).Restart(),
  };
  return *keys;
}

// The nested backoff fields, which a member pointer cannot reach.
constexpr auto kBackoffInitial = [](auto& s) -> auto& { return s.backoff.initial; };
constexpr auto kBackoffMax = [](auto& s) -> auto& { return s.backoff.max; };
constexpr auto kBackoffMultiplier = [](auto& s) -> auto& { return s.backoff.multiplier; };

const std::vector<KeyDef<SubscriptionConfig>>& SubscriptionKeys() {
  using K = Keys<SubscriptionConfig>;
  using C = SubscriptionConfig;
  static const auto* const keys = new std::vector<KeyDef<C>>{
      K::Name("topic", &C::topic).Required().Restart(),
      K::Name("name", &C::name).Required().Restart(),
      KeyDef<C>{.name = "start", .quoted = true, .parse = ParseStart, .text = StartText}.Restart(),
      K::Enum("ordering", &C::ordering, kOrderingModes).Restart(),
      K::Int("max_deliveries", &C::max_deliveries, 1, 1000).Restart(),
      K::Int("max_crashes", &C::max_crashes, 1, 1000).Restart(),
      K::Dur("ack_wait", &C::ack_wait, milliseconds(100), kDay).Restart(),
      K::Dur("backoff_initial", kBackoffInitial, milliseconds(1), kDay).Restart(),
      K::Dur("backoff_max", kBackoffMax, milliseconds(1), kDay).Restart(),
      K::Float("backoff_multiplier", kBackoffMultiplier, 1.0, 100.0).Restart(),
      K::Int("max_backlog", &C::max_backlog, 0, kNoMax).Restart(),
      K::Enum("on_full", &C::on_full, kBacklogFullPolicies).Restart(),
  };
  return *keys;
}

// A plugin's `config`: any table, kept as JSON.
Problem ParsePluginConfigTable(const toml::node& node, const ValueContext&, PluginConfig& p) {
  if (!node.is_table()) return Expected("a table such as { relay = \"smtp://localhost\" }", node);
  nlohmann::json j;
  if (Problem problem = TomlToJson(node, j)) return problem;
  p.config_json = j.dump();
  return std::nullopt;
}

std::string PluginConfigTableText(const PluginConfig& p) {
  auto j = nlohmann::json::parse(p.config_json, nullptr, /*allow_exceptions=*/false);
  return JsonToToml(j.is_discarded() ? nlohmann::json::object() : j);
}

Problem ParsePluginName(const toml::node& node, const ValueContext&, PluginConfig& p) {
  const auto* v = node.as_string();
  if (v == nullptr) return Expected("a plugin name string", node);
  if (Problem problem = CheckPluginName(v->get())) return problem;
  p.name = v->get();
  return std::nullopt;
}

const std::vector<KeyDef<PluginConfig>>& PluginKeys() {
  using K = Keys<PluginConfig>;
  using C = PluginConfig;
  static const auto* const keys = new std::vector<KeyDef<C>>{
      KeyDef<C>{.name = "name",
                .required = true,
                .quoted = true,
                .parse = ParsePluginName,
                .text = [](const C& p) { return p.name; }},
      K::Path("path", &C::path),
      K::Int("instances", &C::instances, 1, 64),
      K::Bool("enabled", &C::enabled),
      K::Dur("handler_timeout", &C::handler_timeout, milliseconds(10), kDay),
      K::Dur("restart_backoff_initial", &C::restart_backoff_initial, milliseconds(1), kDay),
      K::Dur("restart_backoff_max", &C::restart_backoff_max, milliseconds(1), kDay),
      K::Int("max_restarts", &C::max_restarts, 1, 1000),
      K::Dur("restart_window", &C::restart_window, seconds(1), kDay),
      K::Int("max_crashes", &C::max_crashes, 1, 1000),
      KeyDef<C>{.name = "config", .parse = ParsePluginConfigTable, .text = PluginConfigTableText},
  };
  return *keys;
}

// Two keys that constrain each other. When violated, the error is reported at whichever of the two
// was set last (the change that broke it), in that key's words.
template <typename S>
struct PairCheck {
  std::string_view key;  // full names: "broker.max_map_size"
  std::string_view other;
  bool (*ok)(const S&);
  std::string (*problem_at_key)(const S&);
  std::string (*problem_at_other)(const S&);
};

const std::vector<PairCheck<Config>>& ConfigChecks() {
  static const auto* const checks = new std::vector<PairCheck<Config>>{
      {"broker.max_map_size", "broker.map_size",
       [](const Config& c) { return c.broker.max_map_size >= c.broker.map_size; },
       [](const Config& c) {
         return fmt::format("{} is smaller than broker.map_size ({})", FormatSize(c.broker.max_map_size),
                            FormatSize(c.broker.map_size));
       },
       [](const Config& c) {
         return fmt::format("{} is larger than broker.max_map_size ({})", FormatSize(c.broker.map_size),
                            FormatSize(c.broker.max_map_size));
       }},
      {"broker.max_message_bytes", "daemon.max_frame_bytes",
       [](const Config& c) { return c.broker.max_message_bytes < c.daemon.max_frame_bytes; },
       [](const Config& c) {
         return fmt::format(
             "{} must be smaller than daemon.max_frame_bytes ({}): a frame carries the "
             "message and its envelope",
             FormatSize(c.broker.max_message_bytes), FormatSize(c.daemon.max_frame_bytes));
       },
       [](const Config& c) {
         return fmt::format(
             "{} must be larger than broker.max_message_bytes ({}): a frame carries the "
             "message and its envelope",
             FormatSize(c.daemon.max_frame_bytes), FormatSize(c.broker.max_message_bytes));
       }},
  };
  return *checks;
}

const std::vector<PairCheck<SubscriptionConfig>>& SubscriptionChecks() {
  static const auto* const checks = new std::vector<PairCheck<SubscriptionConfig>>{
      {"subscription.backoff_max", "subscription.backoff_initial",
       [](const SubscriptionConfig& s) { return s.backoff.max >= s.backoff.initial; },
       [](const SubscriptionConfig& s) {
         return fmt::format("{} is shorter than backoff_initial ({})", FormatDuration(s.backoff.max),
                            FormatDuration(s.backoff.initial));
       },
       [](const SubscriptionConfig& s) {
         return fmt::format("{} is longer than backoff_max ({})", FormatDuration(s.backoff.initial),
                            FormatDuration(s.backoff.max));
       }},
  };
  return *checks;
}

const std::vector<PairCheck<PluginConfig>>& PluginChecks() {
  static const auto* const checks = new std::vector<PairCheck<PluginConfig>>{
      {"plugin.restart_backoff_max", "plugin.restart_backoff_initial",
       [](const PluginConfig& p) { return p.restart_backoff_max >= p.restart_backoff_initial; },
       [](const PluginConfig& p) {
         return fmt::format("{} is shorter than restart_backoff_initial ({})",
                            FormatDuration(p.restart_backoff_max), FormatDuration(p.restart_backoff_initial));
       },
       [](const PluginConfig& p) {
         return fmt::format("{} is longer than restart_backoff_max ({})",
                            FormatDuration(p.restart_backoff_initial), FormatDuration(p.restart_backoff_max));
       }},
  };
  return *checks;
}

// ---- Applying a document ----

using KeyLocations = std::map<std::string, Location, std::less<>>;

class Loader;

// A top-level section of the file: [name] (one S inside Config) or [[name]] (a vector of S).
class SectionDef {
 public:
  virtual ~SectionDef() = default;
  virtual std::string_view name() const = 0;
  virtual void AddKeyNames(std::vector<std::string>& out) const = 0;
  virtual void Apply(Loader& loader, const toml::node& node, const Location& where) const = 0;
  // Checks across entries once every file is applied (duplicates).
  virtual void Finish(Loader& loader) const = 0;
  virtual void Format(const Config& config, std::string& out) const = 0;
  virtual void Diff(const Config& before, const Config& after, std::vector<ConfigChange>& out) const = 0;
};

class Loader {
 public:
  // Applies one file's text. `file` is the name used in messages. A plugins.d file (`plugins_only`)
  // may hold nothing but [[plugin]] tables.
  void AddText(std::string_view text, const std::string& file, bool plugins_only = false);
  Result<Config> Finish();
  // The daemon section as far as it loaded, unless an error may have kept a socket path from loading
  // (an error in that key or in the [daemon] table itself, or a syntax error): then Finish()'s error.
  Result<DaemonConfig> DaemonSection();

  void Error(const Location& where, std::string_view key, std::string_view problem) {
    errors_.push_back({where, 0, fmt::format("{}: {}", key, problem), std::string(key)});
  }
  Location At(const toml::node& node) const {
    Location l = current_;
    l.line = node.source().begin.line;
    return l;
  }

  // Applies the keys of `table` to `target` using `keys`; records where each key was set under
  // "section.key" in `set_at`.
  template <typename S>
  void ApplyTable(const toml::table& table, std::string_view section, const std::vector<KeyDef<S>>& keys,
                  S& target, KeyLocations& set_at);

  Config& config() { return config_; }
  KeyLocations& scalar_locations() { return scalar_set_at_; }
  std::vector<Location>& entry_locations(std::string_view section) { return entry_at_[std::string(section)]; }

 private:
  Config config_;
  Location current_;
  ValueContext context_;
  KeyLocations scalar_set_at_;
  std::map<std::string, std::vector<Location>, std::less<>> entry_at_;
  std::vector<ConfigError> errors_;
};

template <typename S>
void Loader::ApplyTable(const toml::table& table, std::string_view section,
                        const std::vector<KeyDef<S>>& keys, S& target, KeyLocations& set_at) {
  for (auto&& [key, node] : table) {
    const std::string_view name = key.str();
    const std::string full = fmt::format("{}.{}", section, name);
    const Location where = At(node);
    const KeyDef<S>* def = nullptr;
    for (const KeyDef<S>& k : keys) {
      if (k.name == name) def = &k;
    }
    if (def == nullptr) {
      const KeyDef<S>* nearest = nullptr;
      size_t best = 3;  // suggest only close misspellings
      for (const KeyDef<S>& k : keys) {
        const size_t d = Distance(name, k.name);
        if (d < best) {
          best = d;
          nearest = &k;
        }
      }
      Error(where, full,
            nearest ? fmt::format("unknown key (did you mean \"{}\"?)", nearest->name) : "unknown key");
      continue;
    }
    if (Problem problem = def->parse(node, context_, target)) {
      Error(where, full, *problem);
      continue;
    }
    set_at[full] = where;
  }
}

template <typename S>
void RunChecks(Loader& loader, const S& value, const std::vector<PairCheck<S>>& checks,
               const KeyLocations& set_at, const Location& fallback) {
  for (const PairCheck<S>& check : checks) {
    if (check.ok(value)) continue;
    auto key_at = set_at.find(check.key);
    auto other_at = set_at.find(check.other);
    const bool at_other =
        other_at != set_at.end() && (key_at == set_at.end() || other_at->second.After(key_at->second));
    if (at_other) {
      loader.Error(other_at->second, check.other, check.problem_at_other(value));
    } else {
      loader.Error(key_at != set_at.end() ? key_at->second : fallback, check.key,
                   check.problem_at_key(value));
    }
  }
}

template <typename S>
class TableSection final : public SectionDef {
 public:
  TableSection(std::string_view name, S Config::*member, const std::vector<KeyDef<S>>& keys)
      : name_(name), member_(member), keys_(keys) {}

  std::string_view name() const override { return name_; }

  void AddKeyNames(std::vector<std::string>& out) const override {
    for (const KeyDef<S>& k : keys_) out.push_back(fmt::format("{}.{}", name_, k.name));
  }

  void Apply(Loader& loader, const toml::node& node, const Location& where) const override {
    const toml::table* table = node.as_table();
    if (table == nullptr) {
      loader.Error(where, name_, Expected(fmt::format("a table ([{}])", name_), node));
      return;
    }
    loader.ApplyTable(*table, name_, keys_, loader.config().*member_, loader.scalar_locations());
  }

  void Finish(Loader&) const override {}

  void Format(const Config& config, std::string& out) const override {
    out += fmt::format("\n[{}]\n", name_);
    FormatKeys(keys_, config.*member_, out);
  }

  void Diff(const Config& before, const Config& after, std::vector<ConfigChange>& out) const override {
    for (const KeyDef<S>& k : keys_) {
      std::string a = k.text(before.*member_);
      std::string b = k.text(after.*member_);
      if (a != b)
        out.push_back({fmt::format("{}.{}", name_, k.name), std::move(a), std::move(b), k.needs_restart});
    }
  }

  static void FormatKeys(const std::vector<KeyDef<S>>& keys, const S& value, std::string& out) {
    for (const KeyDef<S>& k : keys) {
      const std::string text = k.text(value);
      out += fmt::format("{} = {}\n", k.name, k.quoted ? Quote(text) : text);
    }
  }

 private:
  std::string_view name_;
  S Config::*member_;
  const std::vector<KeyDef<S>>& keys_;
};

template <typename S>
class ArraySection final : public SectionDef {
 public:
  // `identity` names an entry uniquely ("orders", "orders/inventory"); `what` describes one in errors.
  ArraySection(std::string_view name, std::vector<S> Config::*member, const std::vector<KeyDef<S>>& keys,
               std::string (*identity)(const S&), std::string (*what)(const S&),
               const std::vector<PairCheck<S>>* checks)
      : name_(name), member_(member), keys_(keys), identity_(identity), what_(what), checks_(checks) {}

  std::string_view name() const override { return name_; }

  void AddKeyNames(std::vector<std::string>& out) const override {
    for (const KeyDef<S>& k : keys_) out.push_back(fmt::format("{}.{}", name_, k.name));
  }

  void Apply(Loader& loader, const toml::node& node, const Location& where) const override {
    const toml::array* array = node.as_array();
    if (array == nullptr) {
      loader.Error(where, name_, Expected(fmt::format("an array of tables ([[{}]])", name_), node));
      return;
    }
    for (const toml::node& element : *array) {
      const Location entry_at = loader.At(element);
      const toml::table* table = element.as_table();
      if (table == nullptr) {
        loader.Error(entry_at, name_, Expected(fmt::format("a table ([[{}]])", name_), element));
        continue;
      }
      S entry;
      KeyLocations set_at;
      loader.ApplyTable(*table, name_, keys_, entry, set_at);
      bool complete = true;
      for (const KeyDef<S>& k : keys_) {
        if (k.required && !table->contains(k.name)) {
          loader.Error(entry_at, fmt::format("{}.{}", name_, k.name),
                       fmt::format("missing (every [[{}]] needs one)", name_));
          complete = false;
        }
      }
      if (checks_ != nullptr) RunChecks(loader, entry, *checks_, set_at, entry_at);
      if (!complete) continue;
      (loader.config().*member_).push_back(std::move(entry));
      loader.entry_locations(name_).push_back(entry_at);
    }
  }

  void Finish(Loader& loader) const override {
    const std::vector<S>& entries = loader.config().*member_;
    const std::vector<Location>& at = loader.entry_locations(name_);
    std::map<std::string, size_t> first;
    for (size_t i = 0; i < entries.size(); ++i) {
      auto [it, inserted] = first.emplace(identity_(entries[i]), i);
      if (!inserted) {
        loader.Error(
            at[i], fmt::format("{}.name", name_),
            fmt::format("duplicate {} (first defined at {})", what_(entries[i]), at[it->second].ToString()));
      }
    }
  }

  void Format(const Config& config, std::string& out) const override {
    for (const S& entry : config.*member_) {
      out += fmt::format("\n[[{}]]\n", name_);
      TableSection<S>::FormatKeys(keys_, entry, out);
    }
  }

  void Diff(const Config& before, const Config& after, std::vector<ConfigChange>& out) const override {
    std::map<std::string, const S*> old_entries;
    for (const S& e : before.*member_) old_entries.emplace(identity_(e), &e);
    std::map<std::string, const S*> new_entries;
    for (const S& e : after.*member_) new_entries.emplace(identity_(e), &e);
    for (const S& e : after.*member_) {
      const std::string id = identity_(e);
      auto old = old_entries.find(id);
      if (old == old_entries.end()) {
        out.push_back({fmt::format("{}[{}]", name_, id), "absent", "present", EntriesNeedRestart()});
        continue;
      }
      for (const KeyDef<S>& k : keys_) {
        std::string a = k.text(*old->second);
        std::string b = k.text(e);
        if (a != b) {
          out.push_back(
              {fmt::format("{}[{}].{}", name_, id, k.name), std::move(a), std::move(b), k.needs_restart});
        }
      }
    }
    for (const S& e : before.*member_) {
      const std::string id = identity_(e);
      if (!new_entries.contains(id))
        out.push_back({fmt::format("{}[{}]", name_, id), "present", "absent", EntriesNeedRestart()});
    }
  }

 private:
  // Adding or removing an entry needs a restart when changing any of its keys does (topics and
  // subscriptions live in the open store; plugins are reconciled at once).
  bool EntriesNeedRestart() const {
    return std::all_of(keys_.begin(), keys_.end(), [](const KeyDef<S>& k) { return k.needs_restart; });
  }

  std::string_view name_;
  std::vector<S> Config::*member_;
  const std::vector<KeyDef<S>>& keys_;
  std::string (*identity_)(const S&);
  std::string (*what_)(const S&);
  const std::vector<PairCheck<S>>* checks_;
};

// Every section, in the order FormatConfig prints them.
const std::vector<std::unique_ptr<SectionDef>>& Sections() {
  static const auto* const sections = [] {
    auto* s = new std::vector<std::unique_ptr<SectionDef>>();
    s->push_back(std::make_unique<TableSection<DaemonConfig>>("daemon", &Config::daemon, DaemonKeys()));
    s->push_back(std::make_unique<TableSection<BrokerConfig>>("broker", &Config::broker, BrokerKeys()));
    s->push_back(std::make_unique<TableSection<MetricsConfig>>("metrics", &Config::metrics, MetricsKeys()));
    s->push_back(std::make_unique<ArraySection<TopicConfig>>(
        "topic", &Config::topics, TopicKeys(), [](const TopicConfig& t) { return t.name; },
        [](const TopicConfig& t) { return fmt::format("topic {}", Quote(t.name)); }, nullptr));
    s->push_back(std::make_unique<ArraySection<SubscriptionConfig>>(
        "subscription", &Config::subscriptions, SubscriptionKeys(),
        [](const SubscriptionConfig& c) { return fmt::format("{}/{}", c.topic, c.name); },
        [](const SubscriptionConfig& c) {
          return fmt::format("subscription {} of topic {}", Quote(c.name), Quote(c.topic));
        },
        &SubscriptionChecks()));
    s->push_back(std::make_unique<ArraySection<PluginConfig>>(
        "plugin", &Config::plugins, PluginKeys(), [](const PluginConfig& p) { return p.name; },
        [](const PluginConfig& p) { return fmt::format("plugin {}", Quote(p.name)); }, &PluginChecks()));
    return s;
  }();
  return *sections;
}

fs::path BaseDir(const fs::path& file) {
  std::error_code ec;
  fs::path dir = file.parent_path();
  if (dir.empty()) dir = ".";
  fs::path absolute = fs::absolute(dir, ec);
  // Without a working folder (deleted under us) relative paths stay relative rather than failing.
  return ec ? dir.lexically_normal() : absolute.lexically_normal();
}

void Loader::AddText(std::string_view text, const std::string& file, bool plugins_only) {
  current_ = Location{file, config_.sources.size(), 0};
  config_.sources.emplace_back(file);
  context_.base_dir = BaseDir(fs::path(file));
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    Location where = current_;
    where.line = e.source().begin.line;
    errors_.push_back({where, e.source().begin.column, fmt::format("syntax error: {}", e.description())});
    return;
  }
  for (auto&& [key, node] : root) {
    const Location where = At(node);
    const SectionDef* section = nullptr;
    for (const auto& s : Sections()) {
      if (s->name() == key.str()) section = s.get();
    }
    if (section == nullptr) {
      Error(where, key.str(), node.is_table() ? "unknown section" : "unknown key");
      continue;
    }
    if (plugins_only && section->name() != "plugin") {
      Error(where, key.str(), "a plugins.d file holds only [[plugin]] tables (put this in conf.d/)");
      continue;
    }
    section->Apply(*this, node, where);
  }
}

Result<Config> Loader::Finish() {
  // Known only now that every file is read: a later file may set daemon.plugin_dir.
  for (PluginConfig& p : config_.plugins) {
    if (p.path.empty()) p.path = config_.daemon.plugin_dir / (p.name + ".so");
  }
  // Checks across files only make sense when every file was read whole; otherwise a value that a
  // broken file meant to set would show up as a second, misleading error.
  if (errors_.empty()) {
    for (const auto& s : Sections()) s->Finish(*this);
    Location fallback{config_.sources.empty() ? std::string("(defaults)") : config_.sources.front().string(),
                      0, 0};
    RunChecks(*this, config_, ConfigChecks(), scalar_set_at_, fallback);
  }
  if (errors_.empty()) return std::move(config_);
  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::tie(a.where.order, a.where.line, a.column) < std::tie(b.where.order, b.where.line, b.column);
  });
  std::string message;
  for (size_t i = 0; i < errors_.size() && i < kMaxReportedErrors; ++i) {
    const ConfigError& e = errors_[i];
    if (!message.empty()) message += '\n';
    message += e.where.ToString();
    if (e.column != 0) message += fmt::format(":{}", e.column);
    message += ": " + e.text;
  }
  if (errors_.size() > kMaxReportedErrors) {
    message += fmt::format("\n({} more errors not shown)", errors_.size() - kMaxReportedErrors);
  }
  return InvalidArgument(std::move(message));
}

Result<DaemonConfig> Loader::DaemonSection() {
  for (const ConfigError& e : errors_) {
    if (e.key.empty() || e.key == "daemon" || e.key == "daemon.admin_socket" || e.key == "daemon.broker_socket") {
      return Finish().status();
    }
  }
  return config_.daemon;
}

// Reads a whole file; the error names the file ("FILE: cannot read: No such file or directory").
Status ReadFile(const fs::path& path, std::string& out) {
  const std::string what = fmt::format("{}: cannot read", path.string());
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return ErrnoStatus(errno, what);
  std::string text;
  char buffer[8192];
  for (;;) {
    const size_t n = std::fread(buffer, 1, sizeof buffer, f.get());
    text.append(buffer, n);
    if (text.size() > kMaxConfigFileBytes) {
      return InvalidArgument(
          fmt::format("{}: larger than {}, not a config file", what, FormatSize(kMaxConfigFileBytes)));
    }
    if (n < sizeof buffer) break;
  }
  if (std::ferror(f.get())) return ErrnoStatus(errno != 0 ? errno : EIO, what);
  out = std::move(text);
  return Status::Ok();
}

// The drop-ins of one folder in name order; a missing folder has none.
Result<std::vector<fs::path>> ListDropIns(const fs::path& dropin_dir) {
  std::error_code ec;
  fs::directory_iterator it(dropin_dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
    return ErrnoStatus(ec.value(), fmt::format("{}: cannot read", dropin_dir.string()));
  }
  std::vector<fs::path> dropins;
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string file_name = it->path().filename().string();
    // Editors' and package managers' leftovers (".x.toml.swp", ".#x.toml") are not drop-ins.
    if (file_name.starts_with('.') || !file_name.ends_with(".toml")) continue;
    std::error_code type_ec;
    if (it->is_directory(type_ec)) continue;
    dropins.push_back(it->path());
  }
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
    return ErrnoStatus(ec.value(), fmt::format("{}: cannot read", dropin_dir.string()));
  }
  std::sort(dropins.begin(), dropins.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return dropins;
}

}  // namespace

Result<Config> ParseConfig(std::string_view toml_text, std::string_view name) {
  Loader loader;
  loader.AddText(toml_text, std::string(name));
  return loader.Finish();
}

namespace {

// The main file and its drop-ins (conf.d/, then plugins.d/), applied in that order.
Status LoadFiles(Loader& loader, const fs::path& path, bool allow_missing) {
  std::string text;
  Status read = ReadFile(path, text);
  if (read.ok()) {
    loader.AddText(text, path.string());
  } else if (!(allow_missing && read.code() == StatusCode::kNotFound)) {
    return read;
  }
  for (const char* folder : {"conf.d", "plugins.d"}) {
    Result<std::vector<fs::path>> dropins = ListDropIns(path.parent_path() / folder);
    if (!dropins.ok()) return dropins.status();
    const bool plugins_only = std::string_view(folder) == "plugins.d";
    for (const fs::path& dropin : *dropins) {
      SLUICE_RETURN_IF_ERROR(ReadFile(dropin, text));
      loader.AddText(text, dropin.string(), plugins_only);
    }
  }
  return Status::Ok();
}

}  // namespace

Result<Config> LoadConfig(const std::filesystem::path& path, bool allow_missing) {
  Loader loader;
  SLUICE_RETURN_IF_ERROR(LoadFiles(loader, path, allow_missing));
  return loader.Finish();
}

Result<DaemonConfig> LoadDaemonSection(const std::filesystem::path& path, bool allow_missing) {
  Loader loader;
  SLUICE_RETURN_IF_ERROR(LoadFiles(loader, path, allow_missing));
  return loader.DaemonSection();
}

std::string FormatConfig(const Config& config) {
  std::string out = "# The effective sluice configuration: every key, defaults included.\n";
  if (config.sources.empty()) out += "# from built-in defaults\n";
  for (const fs::path& source : config.sources) out += fmt::format("# from {}\n", source.string());
  for (const auto& section : Sections()) section->Format(config, out);
  return out;
}

std::vector<ConfigChange> DiffConfig(const Config& before, const Config& after) {
  std::vector<ConfigChange> changes;
  for (const auto& section : Sections()) section->Diff(before, after, changes);
  return changes;
}

std::vector<std::string> KnownConfigKeys() {
  std::vector<std::string> keys;
  for (const auto& section : Sections()) section->AddKeyNames(keys);
  return keys;
}

std::string_view LogLevelName(LogLevel level) {
  for (const EnumName<LogLevel>& e : kLogLevels) {
    if (e.value == level) return e.name;
  }
  return "unknown";
}

std::optional<sockaddr_storage> ParseListenAddress(std::string_view listen) {
  std::string host, port_text;
  if (!listen.empty() && listen.front() == '[') {
    size_t close = listen.find("]:");
    if (close == std::string_view::npos) return std::nullopt;
    host = listen.substr(1, close - 1);
    port_text = listen.substr(close + 2);
  } else if (size_t colon = listen.rfind(':'); colon != std::string_view::npos) {
    host = listen.substr(0, colon);
    port_text = listen.substr(colon + 1);
    // "::1:9464" could be read either way: an IPv6 address takes brackets.
    if (host.find(':') != std::string::npos) return std::nullopt;
  } else {
    return std::nullopt;
  }
  // inet_pton stops at a NUL: "127.0.0.1\0junk" must not pass as 127.0.0.1.
  if (host.find('\0') != std::string::npos) return std::nullopt;
  uint16_t port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size()) return std::nullopt;
  sockaddr_storage addr{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
  } else {
    return std::nullopt;
  }
  return addr;
}

}  // namespace sluice
