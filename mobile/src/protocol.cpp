#include "protocol.h"

#include <map>
#include <set>
#include <vector>

namespace shifter {
namespace {

using nlohmann::json;

struct IntField {
  int64_t min;
  int64_t max;
  int64_t fallback;  // the value when the request does not give the field
  int64_t Request::*target;
};

struct CommandSpec {
  Command command;
  std::map<std::string, IntField> ints;
  std::map<std::string, std::string Request::*> strings;
};

// Every command: its name, its fields with their ranges and defaults.
const std::map<std::string, CommandSpec>& command_specs() {
  static const std::map<std::string, CommandSpec> specs = {
      {"switch", {Command::Switch, {}, {{"variant", &Request::variant}}}},
      {"infer",
       {Command::Infer,
        {{"n", {1, 100000, 1, &Request::n}}, {"max_output", {0, 1 << 24, 16, &Request::max_output}}},
        {{"input", &Request::input}, {"output_path", &Request::output_path}}}},
      {"bench",
       {Command::Bench,
        {{"warmup", {0, 100000, 5, &Request::warmup}}, {"runs", {1, 100000, 50, &Request::runs}}},
        {{"variant", &Request::variant}}}},
      {"bench_reload",
       {Command::BenchReload, {{"runs", {1, 1000, 5, &Request::runs}}}, {{"variant", &Request::variant}}}},
      {"stats", {Command::Stats, {}, {}}},
      {"quit", {Command::Quit, {}, {}}},
  };
  return specs;
}

Request defaults(const std::string& name, const CommandSpec& spec) {
  Request request;
  request.command = spec.command;
  request.cmd = name;
  for (const auto& [key, field] : spec.ints) request.*(field.target) = field.fallback;
  return request;
}

std::string joined_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& key : keys) {
    out += (out.empty() ? "" : ", ") + key;
  }
  return out;
}

std::string command_list() {
  std::vector<std::string> names;
  for (const auto& entry : command_specs()) {
    names.push_back(entry.first);
  }
  return joined_keys(names);
}

}  // namespace

Request parse_request(const std::string& line) {
  if (line.size() > kMaxLineBytes) {
    throw ProtocolError(nullptr, nullptr,
                        "request line longer than " + std::to_string(kMaxLineBytes) +
                            " bytes; send one short JSON object per line");
  }
  json document = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) {
    throw ProtocolError(nullptr, nullptr,
                        "malformed JSON; send one JSON object per line, e.g. {\"cmd\":\"stats\"}");
  }
  if (!document.is_object()) {
    throw ProtocolError(nullptr, nullptr,
                        "request is JSON but not an object; send e.g. {\"cmd\":\"stats\"}");
  }
  json id;
  if (auto found = document.find("id"); found != document.end()) {
    if (found->is_structured()) {
      throw ProtocolError(nullptr, nullptr, "'id' must be a string, number, boolean or null");
    }
    id = *found;
  }
  auto cmd = document.find("cmd");
  if (cmd == document.end() || !cmd->is_string()) {
    throw ProtocolError(nullptr, id, "missing string field 'cmd'; one of: " + command_list());
  }
  const std::string name = cmd->get<std::string>();
  auto spec = command_specs().find(name);
  if (spec == command_specs().end()) {
    throw ProtocolError(name, id, "unknown command '" + name + "'; one of: " + command_list());
  }
  Request request = defaults(name, spec->second);
  request.id = id;
  std::vector<std::string> allowed = {"cmd", "id"};
  for (const auto& [key, _] : spec->second.ints) allowed.push_back(key);
  for (const auto& [key, _] : spec->second.strings) allowed.push_back(key);
  for (const auto& [key, value] : document.items()) {
    if (key == "cmd" || key == "id") {
      continue;
    }
    if (auto field = spec->second.ints.find(key); field != spec->second.ints.end()) {
      const IntField& range = field->second;
      if (!value.is_number_integer() || value.get<int64_t>() < range.min ||
          value.get<int64_t>() > range.max ||
          (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(range.max))) {
        throw ProtocolError(request.cmd, request.id,
                            "'" + key + "' must be an integer from " + std::to_string(range.min) +
                                " to " + std::to_string(range.max));
      }
      request.*(range.target) = value.get<int64_t>();
    } else if (auto text = spec->second.strings.find(key); text != spec->second.strings.end()) {
      if (!value.is_string() || value.get<std::string>().empty()) {
        throw ProtocolError(request.cmd, request.id, "'" + key + "' must be a non-empty string");
      }
      if (value.get<std::string>().find('\0') != std::string::npos) {  // a path would be cut there
        throw ProtocolError(request.cmd, request.id, "'" + key + "' must not contain a NUL character");
      }
      request.*(text->second) = value.get<std::string>();
    } else {
      throw ProtocolError(request.cmd, request.id,
                          "unknown field '" + key + "' for " + request.cmd +
                              "; allowed: " + joined_keys(allowed));
    }
  }
  if (request.command == Command::Switch && request.variant.empty()) {
    throw ProtocolError(request.cmd, request.id, "switch needs 'variant', e.g. "
                        "{\"cmd\":\"switch\",\"variant\":\"round-03\"}");
  }
  return request;
}

Request default_request(Command command) {
  for (const auto& [name, spec] : command_specs()) {
    if (spec.command == command) return defaults(name, spec);
  }
  throw std::logic_error("a command without an entry in the command table");
}

}  // namespace shifter
