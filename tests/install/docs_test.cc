// SPDX-License-Identifier: MIT
//
// Checks the man pages against the code they document, so that a command, option, config key, frame
// type or error code added without its documentation fails the build's tests:
//   - sluicectl(1): every command that `sluicectl [COMMAND...] --help` lists (nested ones too) has a .SS
//     heading under COMMANDS starting with its full name, every such heading names a real command, and
//     every option of every --help is named in the page;
//   - sluiced(8): every option of `sluiced --help`;
//   - sluice.toml(5): every key of KnownConfigKeys() has a .TP entry under the heading of its section,
//     every entry there is a known key, and the default it states is the built-in one;
//   - sluice-protocol(7): every frame type, error code, start kind, ordering and bundle status of
//     protocol.fbs with its value, every admin command, and a Hello frame that the real decoder
//     accepts.
// The binaries come from $SLUICECTL and $SLUICED, the pages from the source tree (SLUICE_SOURCE_DIR).
// Comment lines of a page never count as documentation. Single-threaded.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "broker/wire/codec.h"
#include "daemon/admin.h"
#include "daemon/config.h"

#ifndef SLUICE_SOURCE_DIR
#error "SLUICE_SOURCE_DIR must name the source tree (tests/install/meson.build defines it)"
#endif

namespace sluice {
namespace {

namespace fs = std::filesystem;

std::string ReadSource(std::string_view relative) {
  std::ifstream in(fs::path(SLUICE_SOURCE_DIR) / relative);
  EXPECT_TRUE(in.good()) << "cannot read " << relative;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  EXPECT_NE(v, nullptr) << name << " is not set (tests/install/meson.build sets it)";
  return v == nullptr ? std::string() : std::string(v);
}

std::string ShellQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs `argv` with the shell, returns what it printed (stdout and stderr); *status gets the exit code.
std::string RunCommand(const std::vector<std::string>& argv, int* status) {
  std::string command;
  for (const auto& a : argv) command += ShellQuote(a) + " ";
  command += "2>&1";
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    *status = -1;
    return {};
  }
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  int rc = pclose(p);
  *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

// ---- troff ----

// The text of a troff line without font changes and with the escapes we use spelled out: "\-\-limit"
// is "--limit", "\fBdata_dir\fR" is "data_dir", "\(dq" is '"'.
std::string Plain(std::string_view line) {
  std::string out;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] != '\\' || i + 1 == line.size()) {
      out += line[i];
      continue;
    }
    const char n = line[++i];
    switch (n) {
      case '-': out += '-'; break;
      case 'e':
      case '\\': out += '\\'; break;
      case '&':
      case '%': break;
      case 'f':  // \fB, \f(CW, \f[CW]
        if (i + 1 < line.size() && line[i + 1] == '(') {
          i += 3;
        } else if (i + 1 < line.size() && line[i + 1] == '[') {
          const size_t end = line.find(']', i);
          i = end == std::string_view::npos ? line.size() : end;
        } else {
          i += 1;
        }
        break;
      case '(':  // \(dq and friends
        if (i + 2 < line.size()) {
          const std::string_view name = line.substr(i + 1, 2);
          out += name == "dq" || name == "lq" || name == "rq" ? "\"" : name == "aq" ? "'" : " ";
          i += 2;
        }
        break;
      default: out += n;  // "\ " is a space
    }
  }
  return out;
}

struct Page {
  std::vector<std::string> lines;  // without comment lines
  std::string text;                // Plain() of every line, joined by blanks
};

Page LoadPage(std::string_view relative) {
  Page page;
  std::istringstream in(ReadSource(relative));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(".\\\"") || line.starts_with("'\\\"")) continue;
    page.lines.push_back(line);
    page.text += Plain(line) + " ";
  }
  return page;
}

// The heading text of a .SH/.SS line, plain and without quotes.
std::string HeadingText(std::string_view line) {
  std::string text = Plain(line.substr(3));
  std::string out;
  for (char c : text) {
    if (c != '"') out += c;
  }
  const size_t begin = out.find_first_not_of(' ');
  return begin == std::string::npos ? std::string() : out.substr(begin);
}

std::string FirstWord(std::string_view s, std::string_view stops = " ") {
  const size_t begin = s.find_first_not_of(' ');
  if (begin == std::string_view::npos) return {};
  s.remove_prefix(begin);
  return std::string(s.substr(0, s.find_first_of(stops)));
}

bool NamesOption(const std::string& text, const std::string& option) {
  const std::regex re("(^|[^A-Za-z0-9-])" + option + "([^A-Za-z0-9-]|$)");
  return std::regex_search(text, re);
}

// ---- CLI11 --help ----

struct Help {
  std::vector<std::string> options;      // "-c", "--config", ...
  std::vector<std::string> subcommands;
};

Help ParseHelp(const std::string& text) {
  enum class Section { kNone, kOptions, kSubcommands };
  Section section = Section::kNone;
  Help help;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line == "Options:") {
      section = Section::kOptions;
    } else if (line == "Subcommands:") {
      section = Section::kSubcommands;
    } else if (!line.starts_with(" ")) {
      if (!line.empty()) section = Section::kNone;
    } else if (line.size() > 2 && line.starts_with("  ") && line[2] != ' ') {
      // An entry; description continuation lines are indented further.
      const std::string word = FirstWord(line);
      if (section == Section::kSubcommands) {
        help.subcommands.push_back(word);
      } else if (section == Section::kOptions && word.starts_with("-")) {
        std::istringstream names(word.substr(0, word.find('=')));
        for (std::string name; std::getline(names, name, ',');) help.options.push_back(name);
      }
    }
  }
  return help;
}

// Every command path ("" for the program itself, "dlq list") and the options its --help lists.
void CollectCommands(const std::string& exe, const std::vector<std::string>& path,
                     std::map<std::string, std::vector<std::string>>* out) {
  ASSERT_LT(path.size(), 4u) << "runaway recursion in --help parsing";
  std::vector<std::string> argv = {exe};
  argv.insert(argv.end(), path.begin(), path.end());
  argv.push_back("--help");
  int status = 0;
  const std::string text = RunCommand(argv, &status);
  std::string name;
  for (const auto& p : path) name += (name.empty() ? "" : " ") + p;
  ASSERT_EQ(status, 0) << exe << " " << name << " --help:\n" << text;
  const Help help = ParseHelp(text);
  (*out)[name] = help.options;
  for (const auto& sub : help.subcommands) {
    std::vector<std::string> next = path;
    next.push_back(sub);
    CollectCommands(exe, next, out);
  }
}

// ---- sluicectl(1) ----

class SluicectlPageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CollectCommands(Env("SLUICECTL"), {}, &commands_);
    page_ = LoadPage("man/sluicectl.1");
    bool in_commands = false;
    for (const auto& line : page_.lines) {
      if (line.starts_with(".SH ")) in_commands = HeadingText(line) == "COMMANDS";
      if (line.starts_with(".SS ") && in_commands) headings_.push_back(HeadingText(line));
    }
  }

  std::map<std::string, std::vector<std::string>> commands_;
  Page page_;
  std::vector<std::string> headings_;  // the .SS headings under COMMANDS
};

TEST_F(SluicectlPageTest, HelpIsParsed) {
  // Guards the parser: if CLI11's layout changed, the checks below would pass on nothing.
  ASSERT_TRUE(commands_.contains(""));
  EXPECT_THAT(commands_[""], ::testing::IsSupersetOf({"--json", "--socket", "--config", "--timeout"}));
  EXPECT_TRUE(commands_.contains("status"));
  EXPECT_TRUE(commands_.contains("dlq list"));
  EXPECT_THAT(commands_["dlq list"], ::testing::Contains("--limit"));
  EXPECT_FALSE(headings_.empty());
}

TEST_F(SluicectlPageTest, DocumentsEveryCommand) {
  for (const auto& [command, options] : commands_) {
    if (command.empty()) continue;
    bool found = false;
    for (const auto& h : headings_) {
      if (h == command || h.starts_with(command + " ")) found = true;
    }
    EXPECT_TRUE(found) << "`sluicectl " << command
                       << "` has no .SS heading under COMMANDS in man/sluicectl.1";
  }
}

TEST_F(SluicectlPageTest, DocumentsOnlyRealCommands) {
  const std::regex word("[a-z][a-z0-9._-]*");
  for (const auto& h : headings_) {
    std::istringstream words(h);
    std::string command;
    for (std::string w; words >> w && std::regex_match(w, word);) command += (command.empty() ? "" : " ") + w;
    EXPECT_TRUE(commands_.contains(command))
        << "man/sluicectl.1 documents `sluicectl " << command << "`, which sluicectl --help does not list";
  }
}

TEST_F(SluicectlPageTest, DocumentsEveryOption) {
  for (const auto& [command, options] : commands_) {
    for (const auto& option : options) {
      EXPECT_TRUE(NamesOption(page_.text, option))
          << "option " << option << " of `sluicectl " << command << " --help` is not in man/sluicectl.1";
    }
  }
}

// ---- sluiced(8) ----

TEST(SluicedPageTest, DocumentsEveryOption) {
  int status = 0;
  const std::string text = RunCommand({Env("SLUICED"), "--help"}, &status);
  ASSERT_EQ(status, 0) << text;
  const Help help = ParseHelp(text);
  EXPECT_THAT(help.options, ::testing::IsSupersetOf({"--config", "--check-config", "--version"}));
  const Page page = LoadPage("man/sluiced.8");
  for (const auto& option : help.options) {
    EXPECT_TRUE(NamesOption(page.text, option)) << "option " << option << " of sluiced is not in man/sluiced.8";
  }
}

// ---- sluice.toml(5) ----

// key -> the default the page states (quotes removed), or "(required)".
std::map<std::string, std::string> DocumentedKeys() {
  const Page page = LoadPage("man/sluice.toml.5");
  const std::regex section_re(R"(\[\[?([a-z_]+)\]\]?)");
  std::map<std::string, std::string> keys;
  std::string section;
  for (size_t i = 0; i < page.lines.size(); ++i) {
    const std::string& line = page.lines[i];
    if (line.starts_with(".SH ")) {
      std::smatch m;
      const std::string heading = HeadingText(line);
      section = std::regex_search(heading, m, section_re) ? m[1].str() : "";
    } else if (line == ".TP" && !section.empty() && i + 1 < page.lines.size()) {
      const std::string tag = Plain(page.lines[i + 1]);
      std::string value = "(no default stated)";
      if (tag.find("(required)") != std::string::npos) {
        value = "(required)";
      } else if (size_t at = tag.find("(default "); at != std::string::npos) {
        at += 9;
        value.clear();
        for (; at < tag.size() && tag[at] != ';' && tag[at] != ')'; ++at) {
          if (tag[at] != '"') value += tag[at];
        }
      }
      keys[section + "." + FirstWord(tag, " =")] = value;
    }
  }
  return keys;
}

// key -> the built-in default as FormatConfig prints it (quotes removed). One entry of each array
// section with only its required keys makes it print that section's keys too.
std::map<std::string, std::string> BuiltinDefaults() {
  std::string text = "[[topic]]\nname = \"t\"\n[[subscription]]\ntopic = \"t\"\nname = \"s\"\n";
  const std::vector<std::string> known = KnownConfigKeys();
  if (std::find(known.begin(), known.end(), "plugin.name") != known.end()) {
    text += "[[plugin]]\nname = \"p\"\n";
  }
  auto config = ParseConfig(text, "defaults.toml");
  EXPECT_TRUE(config.ok()) << config.status().message();
  std::map<std::string, std::string> out;
  if (!config.ok()) return out;
  std::istringstream in(FormatConfig(*config));
  std::string section;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("[")) {
      section = line.substr(line.find_first_not_of('['));
      section = section.substr(0, section.find(']'));
    } else if (const size_t eq = line.find(" = "); eq != std::string::npos && !line.starts_with("#")) {
      std::string value;
      for (char c : line.substr(eq + 3)) {
        if (c != '"') value += c;
      }
      out[section + "." + line.substr(0, eq)] = value;
    }
  }
  return out;
}

TEST(ConfigPageTest, DocumentsEveryKey) {
  const auto documented = DocumentedKeys();
  const std::vector<std::string> known = KnownConfigKeys();
  ASSERT_GT(known.size(), 20u);
  for (const auto& key : known) {
    EXPECT_TRUE(documented.contains(key)) << key << " has no .TP entry under its section in man/sluice.toml.5";
  }
  for (const auto& [key, value] : documented) {
    EXPECT_NE(std::find(known.begin(), known.end(), key), known.end())
        << "man/sluice.toml.5 documents " << key << ", which the loader does not accept";
  }
}

// A stated default with a <placeholder> for a build-dependent part ("<libdir>/sluice/plugins") matches
// when the text before the first placeholder and after the last one match.
bool DefaultMatches(const std::string& stated, const std::string& actual) {
  const size_t open = stated.find('<');
  if (open == std::string::npos) return stated == actual;
  const std::string head = stated.substr(0, open);
  const std::string tail = stated.substr(stated.rfind('>') + 1);
  return actual.size() >= head.size() + tail.size() && actual.starts_with(head) && actual.ends_with(tail);
}

TEST(ConfigPageTest, StatesTheBuiltinDefaults) {
  EXPECT_TRUE(DefaultMatches("<libdir>/sluice/plugins", "/usr/lib/x86_64-linux-gnu/sluice/plugins"));
  EXPECT_FALSE(DefaultMatches("<libdir>/sluice/plugins", "/usr/lib/sluice"));
  const auto documented = DocumentedKeys();
  const auto defaults = BuiltinDefaults();
  ASSERT_FALSE(defaults.empty());
  for (const auto& [key, value] : documented) {
    if (value == "(required)") continue;
    auto it = defaults.find(key);
    if (it == defaults.end()) continue;  // DocumentsEveryKey reports it
    EXPECT_TRUE(DefaultMatches(value, it->second))
        << "man/sluice.toml.5 says the default of " << key << " is \"" << value << "\", the loader's is \""
        << it->second << "\"";
  }
}

// ---- sluice-protocol(7) ----

class ProtocolPageTest : public ::testing::Test {
 protected:
  void SetUp() override { page_ = LoadPage("man/sluice-protocol.7"); }

  bool HasHeading(const std::string& prefix) const {
    for (const auto& line : page_.lines) {
      if ((line.starts_with(".SS ") || line.starts_with(".SH ")) && HeadingText(line).starts_with(prefix)) {
        return true;
      }
    }
    return false;
  }

  bool Says(const std::string& pattern) const { return std::regex_search(page_.text, std::regex(pattern)); }

  Page page_;
};

TEST_F(ProtocolPageTest, DocumentsEveryFrameType) {
  for (wire::Body body : wire::EnumValuesBody()) {
    if (body == wire::Body::NONE) continue;
    const std::string name = wire::EnumNameBody(body);
    EXPECT_TRUE(HasHeading(name + " (")) << "frame type " << name << " has no .SS heading";
    EXPECT_TRUE(Says("(^|[^A-Za-z])" + name + " " + std::to_string(static_cast<int>(body)) + "([^0-9]|$)"))
        << "the union type value of " << name << " (" << static_cast<int>(body) << ") is not stated";
  }
}

TEST_F(ProtocolPageTest, DocumentsEveryErrorCode) {
  for (wire::ErrorCode code : wire::EnumValuesErrorCode()) {
    const std::string text = std::string(wire::EnumNameErrorCode(code)) + " (" +
                             std::to_string(static_cast<int>(code)) + ")";
    EXPECT_NE(page_.text.find(text), std::string::npos) << "error code \"" << text << "\" is not documented";
  }
}

TEST_F(ProtocolPageTest, DocumentsEveryEnumValue) {
  for (wire::StartKind kind : wire::EnumValuesStartKind()) {
    const std::string text = std::string(wire::EnumNameStartKind(kind)) + " (" +
                             std::to_string(static_cast<int>(kind));
    EXPECT_NE(page_.text.find(text), std::string::npos) << "start kind \"" << text << "\" is not documented";
  }
  for (wire::Ordering ordering : wire::EnumValuesOrdering()) {
    const std::string text = std::string(wire::EnumNameOrdering(ordering)) + " (" +
                             std::to_string(static_cast<int>(ordering));
    EXPECT_NE(page_.text.find(text), std::string::npos) << "ordering \"" << text << "\" is not documented";
  }
  for (wire::BundleStatus status : wire::EnumValuesBundleStatus()) {
    const std::string text = std::string(wire::EnumNameBundleStatus(status)) + " (" +
                             std::to_string(static_cast<int>(status)) + ")";
    EXPECT_NE(page_.text.find(text), std::string::npos) << "bundle status \"" << text << "\" is not documented";
  }
}

TEST_F(ProtocolPageTest, DocumentsEveryAdminCommand) {
  std::set<std::string> tags;
  for (size_t i = 0; i + 1 < page_.lines.size(); ++i) {
    if (page_.lines[i] != ".TP") continue;
    // ".BR name \" {args}\"": the word after the macro.
    const std::string& tag = page_.lines[i + 1];
    tags.insert(FirstWord(Plain(tag.substr(tag.find(' ') + 1))));
  }
  for (const AdminCommand& c : AdminCommands()) {
    EXPECT_TRUE(tags.contains(std::string(c.name))) << "admin command " << c.name << " has no .TP entry";
  }
}

TEST_F(ProtocolPageTest, HelloExampleIsAValidFrame) {
  // The hex dump after "complete Hello frame", in xxd's layout.
  std::vector<uint8_t> bytes;
  bool after_intro = false, in_example = false;
  for (const auto& line : page_.lines) {
    if (Plain(line).find("complete Hello frame") != std::string::npos) after_intro = true;
    if (after_intro && line == ".EX") {
      in_example = true;
      continue;
    }
    if (in_example && line == ".EE") break;
    if (!in_example) continue;
    std::istringstream words(line.substr(line.find(':') + 1, 40));
    for (std::string group; words >> group;) {
      for (size_t i = 0; i + 1 < group.size(); i += 2) {
        bytes.push_back(static_cast<uint8_t>(std::stoi(group.substr(i, 2), nullptr, 16)));
      }
    }
  }
  ASSERT_GT(bytes.size(), 12u) << "no Hello example found in man/sluice-protocol.7";
  std::vector<uint64_t> aligned((bytes.size() + 7) / 8);
  std::memcpy(aligned.data(), bytes.data(), bytes.size());
  auto frame = wire::VerifyFrame(reinterpret_cast<const uint8_t*>(aligned.data()), bytes.size(),
                                 wire::kDefaultMaxFrameBytes);
  ASSERT_TRUE(frame.ok()) << frame.status().message();
  ASSERT_EQ((*frame)->body_type(), wire::Body::Hello);
  const wire::Hello* hello = (*frame)->body_as_Hello();
  EXPECT_EQ(hello->protocol_version(), wire::kProtocolVersion);
  ASSERT_NE(hello->name(), nullptr);
  EXPECT_EQ(hello->name()->str(), "demo");
  EXPECT_TRUE(wire::CheckClientHello(*hello).ok());
}

}  // namespace
}  // namespace sluice
