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
  int64_t Request::*target;
};

struct CommandSpec {
  std::map<std::string, IntField> ints;
  std::map<std::string, std::string Request::*> strings;
};

const std::map<std::string, CommandSpec>& command_specs() {
  static const std::map<std::string, CommandSpec> specs = {
      {"switch", {{}, {{"variant", &Request::variant}}}},
      {"infer",
       {{{"n", {1, 100000, &Request::n}}, {"max_output", {0, 1 << 24, &Request::max_output}}},
        {{"input", &Request::input}, {"output_path", &Request::output_path}}}},
      {"bench",
       {{{"warmup", {0, 100000, &Request::warmup}}, {"runs", {1, 100000, &Request::runs}}},
        {{"variant", &Request::variant}}}},
      {"bench_reload", {{{"runs", {1, 1000, &Request::runs}}}, {{"variant", &Request::variant}}}},
      {"stats", {}},
      {"quit", {}},
  };
  return specs;
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
  Request request;
  if (auto id = document.find("id"); id != document.end()) {
    if (id->is_structured()) {
      throw ProtocolError(nullptr, nullptr, "'id' must be a string, number, boolean or null");
    }
    request.id = *id;
  }
  auto cmd = document.find("cmd");
  if (cmd == document.end() || !cmd->is_string()) {
    throw ProtocolError(nullptr, request.id,
                        "missing string field 'cmd'; one of: " + command_list());
  }
  request.cmd = cmd->get<std::string>();
  auto spec = command_specs().find(request.cmd);
  if (spec == command_specs().end()) {
    throw ProtocolError(request.cmd, request.id,
                        "unknown command '" + request.cmd + "'; one of: " + command_list());
  }
  if (request.cmd == "bench_reload") {
    request.runs = 5;
  }
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
  if (request.cmd == "switch" && request.variant.empty()) {
    throw ProtocolError(request.cmd, request.id, "switch needs 'variant', e.g. "
                        "{\"cmd\":\"switch\",\"variant\":\"round-03\"}");
  }
  return request;
}

}  // namespace shifter
