// DeepSeek-V4 prompt renderer. Mirrors the reference encoder's pipeline step by step (spec §2):
// merge tool messages into user turns -> sort tool results into call order -> resolve
// drop_thinking -> render each message + its transition. Where the reference relies on Python
// quirks (truthiness, str.format of None, json.loads/dumps) the behaviour is spelled out here.
#include "text/chat_format.h"

#include <algorithm>
#include <unordered_map>

#include "text/json_py.h"

namespace dsv4::text {

namespace {

constexpr std::string_view kToolResultOpen = "<tool_result>";
constexpr std::string_view kToolResultClose = "</tool_result>";

// Tools block (spec §2.2), split around {tool_schemas}; exact bytes.
constexpr std::string_view kToolsHead =
    "## Tools\n"
    "\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
    "\n"
    "<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n"
    "\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n"
    "\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n"
    "\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n"
    "\n"
    "### Available Tool Schemas\n"
    "\n";
constexpr std::string_view kToolsTail =
    "\n"
    "\n"
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool "
    "calls.\n";

constexpr std::string_view kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

constexpr std::string_view kEffortAbsoluteMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

constexpr std::string_view kEffortBeyondMax =
    "Reasoning Effort: Beyond maximum \u2014 exhaustive, relentless, and uncompromising.\n"
    "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: "
    "exhaustively decompose the problem into its most fundamental components, trace every causal "
    "chain to its root, and resolve the underlying cause rather than any surface symptom.\n"
    "Do not stop reasoning until you have independently verified the solution from multiple angles "
    "and are certain that no assumption remains unchecked and no error remains undiscovered.\n\n";

// ---------------------------------------------------------------- merged representation

struct Block {
  bool tool_result = false;
  std::string_view text;         // text block, or tool output
  std::string_view tool_use_id;  // tool_result only
};

// A message after merge_tool_messages: user turns own a block list, other roles point at the
// source message. Views point into the request, which outlives rendering.
struct Item {
  Role role = Role::kUser;
  const Message* src = nullptr;  // source message (for user: the one that opened the turn)
  std::vector<Block> blocks;     // user only
  std::optional<Task> task;
  bool wo_eos = false;
  bool drop_reasoning = false;
  std::string where;             // for error messages
};

std::string describe(bool in_context, std::size_t i) {
  return std::string(in_context ? "context" : "messages") + "[" + std::to_string(i) + "]";
}

void check_utf8(std::string_view s, const std::string& where, const char* field) {
  std::size_t bad = json_py::find_invalid_utf8(s);
  if (bad != std::string_view::npos)
    throw dsv4::Error(where + "." + field + ": invalid UTF-8 at byte " + std::to_string(bad));
}

void validate_message(const Message& m, const std::string& where) {
  if (m.content) check_utf8(*m.content, where, "content");
  if (m.reasoning_content) check_utf8(*m.reasoning_content, where, "reasoning_content");
  check_utf8(m.tool_call_id, where, "tool_call_id");
  for (std::size_t k = 0; k < m.tool_calls.size(); ++k) {
    const ToolCall& tc = m.tool_calls[k];
    std::string w = where + ".tool_calls[" + std::to_string(k) + "]";
    check_utf8(tc.id, w, "id");
    check_utf8(tc.name, w, "function.name");
    check_utf8(tc.arguments, w, "function.arguments");
  }
  for (std::size_t k = 0; k < m.tools.size(); ++k)
    if (!m.tools[k].function.is_object())
      throw dsv4::Error(where + ".tools[" + std::to_string(k) + "].function: must be a JSON object");
}

// merge_tool_messages: tool results and consecutive user texts join one user turn.
std::vector<Item> merge_tool_messages(const std::vector<Message>& msgs, bool in_context) {
  std::vector<Item> out;
  out.reserve(msgs.size());
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    const Message& m = msgs[i];
    std::string where = describe(in_context, i);
    validate_message(m, where);
    if (m.role == Role::kTool) {
      // A null tool output renders as "" (the reference would print Python's "None").
      Block b{true, m.content ? std::string_view(*m.content) : std::string_view(), m.tool_call_id};
      if (!out.empty() && out.back().role == Role::kUser) {
        out.back().blocks.push_back(b);
      } else {
        Item it;
        it.role = Role::kUser;
        it.src = &m;
        it.blocks.push_back(b);
        it.where = where;
        out.push_back(std::move(it));
      }
    } else if (m.role == Role::kUser) {
      if (!m.content)
        throw dsv4::Error(where + ".content: a user message needs string content, got null");
      Block b{false, *m.content, {}};
      // Fields of a user message merged into the previous turn (task, tools, ...) are lost,
      // exactly as in the reference.
      if (!out.empty() && out.back().role == Role::kUser && !out.back().task) {
        out.back().blocks.push_back(b);
      } else {
        Item it;
        it.role = Role::kUser;
        it.src = &m;
        it.blocks.push_back(b);
        it.task = m.task;
        it.wo_eos = m.wo_eos;
        it.where = where;
        out.push_back(std::move(it));
      }
    } else {
      Item it;
      it.role = m.role;
      it.src = &m;
      it.task = m.task;
      it.wo_eos = m.wo_eos;
      it.where = where;
      out.push_back(std::move(it));
    }
  }
  return out;
}

// sort_tool_results_by_call_order: the last assistant with tool calls defines the order;
// unknown ids sort as 0; text blocks keep their slots; the sort is stable.
void sort_tool_results(std::vector<Item>& items) {
  std::unordered_map<std::string_view, int> order;
  for (Item& it : items) {
    if (it.role == Role::kAssistant && !it.src->tool_calls.empty()) {
      order.clear();
      int idx = 0;
      for (const ToolCall& tc : it.src->tool_calls) {
        if (!tc.id.empty()) order[tc.id] = idx;
        ++idx;
      }
    } else if (it.role == Role::kUser) {
      std::vector<Block> results;
      for (const Block& b : it.blocks)
        if (b.tool_result) results.push_back(b);
      if (results.size() <= 1 || order.empty()) continue;
      auto key = [&](const Block& b) {
        auto f = order.find(b.tool_use_id);
        return f == order.end() ? 0 : f->second;
      };
      std::stable_sort(results.begin(), results.end(),
                       [&](const Block& a, const Block& b) { return key(a) < key(b); });
      std::size_t r = 0;
      for (Block& b : it.blocks)
        if (b.tool_result) b = results[r++];
    }
  }
}

bool has_tools(const Item& it) { return it.role != Role::kUser && !it.src->tools.empty(); }

long find_last_user_index(const std::vector<Item>& items) {
  for (long i = static_cast<long>(items.size()) - 1; i >= 0; --i) {
    Role r = items[static_cast<std::size_t>(i)].role;
    if (r == Role::kUser || r == Role::kDeveloper) return i;
  }
  return -1;
}

// _drop_thinking_messages: before the last user turn, assistants lose reasoning and developer
// messages disappear; everything else is kept.
std::vector<Item> drop_thinking_messages(const std::vector<Item>& items) {
  const long last_user = find_last_user_index(items);
  std::vector<Item> out;
  out.reserve(items.size());
  for (long i = 0; i < static_cast<long>(items.size()); ++i) {
    const Item& it = items[static_cast<std::size_t>(i)];
    if (it.role != Role::kAssistant && it.role != Role::kDeveloper) {
      out.push_back(it);
    } else if (i >= last_user) {
      out.push_back(it);
    } else if (it.role == Role::kAssistant) {
      Item copy = it;
      copy.drop_reasoning = true;
      out.push_back(std::move(copy));
    }
  }
  return out;
}

void render_tools(std::string& out, const std::vector<Tool>& tools, const std::string& where) {
  out += kToolsHead;
  for (std::size_t k = 0; k < tools.size(); ++k) {
    if (k) out += '\n';
    try {
      json_py::dump_to(out, tools[k].function);
    } catch (const dsv4::Error& e) {
      throw dsv4::Error(where + ".tools[" + std::to_string(k) + "]: " + e.what());
    }
  }
  out += kToolsTail;
}

void render_system_extras(std::string& out, const Message& m, const std::string& where) {
  if (!m.tools.empty()) {
    out += "\n\n";
    render_tools(out, m.tools, where);
  }
  if (json_py::truthy(m.response_format)) {
    out += "\n\n";
    out += kResponseFormatHead;
    try {
      json_py::dump_to(out, m.response_format);
    } catch (const dsv4::Error& e) {
      throw dsv4::Error(where + ".response_format: " + e.what());
    }
  }
}

// encode_arguments_to_dsml for one call.
void render_invoke(std::string& out, const ToolCall& tc, const std::string& where) {
  json_py::Json args;
  try {
    args = json_py::parse(tc.arguments);
  } catch (const json_py::SyntaxError&) {
    // Unparsable arguments are passed through as one string parameter.
    args = json_py::Json::object();
    args["arguments"] = tc.arguments;
  } catch (const dsv4::Error& e) {
    throw dsv4::Error(where + ".function.arguments: " + e.what());
  }
  if (!args.is_object())
    throw dsv4::Error(where + ".function.arguments: must be a JSON object, got " +
                      std::string(args.is_binary() ? "number" : args.type_name()));

  out += "<｜DSML｜invoke name=\"";
  out += tc.name;
  out += "\">\n";
  bool first = true;
  for (const auto& [key, value] : args.items()) {
    // Keys and string values are pasted raw; a lone surrogate from a \u escape must not leak.
    check_utf8(key, where, "function.arguments (key)");
    if (value.is_string()) check_utf8(value.get_ref<const std::string&>(), where, "function.arguments (value)");
    if (!first) out += '\n';
    first = false;
    out += "<｜DSML｜parameter name=\"";
    out += key;
    if (value.is_string()) {
      out += "\" string=\"true\">";
      out += value.get_ref<const std::string&>();  // raw, never escaped
    } else {
      out += "\" string=\"false\">";
      try {
        json_py::dump_to(out, value);
      } catch (const dsv4::Error& e) {
        throw dsv4::Error(where + ".function.arguments: " + e.what());
      }
    }
    out += "</｜DSML｜parameter>";
  }
  out += "\n</｜DSML｜invoke>";
}

struct RenderCtx {
  const std::vector<Item>& items;
  ThinkingMode mode;
  bool drop_thinking;
  std::string_view effort_text;
  long last_user;
};

void render_message(std::string& out, std::size_t index, const RenderCtx& c) {
  const Item& it = c.items[index];
  const Message& m = *it.src;
  const bool thinking = c.mode == ThinkingMode::kThinking;

  if (index == 0 && thinking) out += c.effort_text;

  switch (it.role) {
    case Role::kSystem:
      if (m.content) out += *m.content;
      render_system_extras(out, m, it.where);
      break;
    case Role::kDeveloper:
      if (!m.content || m.content->empty())
        throw dsv4::Error(it.where + ".content: a developer message needs non-empty content");
      out += tokens::kUser;
      out += *m.content;
      render_system_extras(out, m, it.where);
      break;
    case Role::kUser: {
      out += tokens::kUser;
      bool first = true;
      for (const Block& b : it.blocks) {
        if (!first) out += "\n\n";
        first = false;
        if (b.tool_result) {
          out += kToolResultOpen;
          out += b.text;
          out += kToolResultClose;
        } else {
          out += b.text;
        }
      }
      break;
    }
    case Role::kLatestReminder:
      out += tokens::kLatestReminder;
      if (m.content) out += *m.content;
      break;
    case Role::kAssistant: {
      const bool prev_has_task = index > 0 && c.items[index - 1].task.has_value();
      if (thinking && !prev_has_task &&
          (!c.drop_thinking || static_cast<long>(index) > c.last_user)) {
        if (m.reasoning_content && !it.drop_reasoning) out += *m.reasoning_content;
        out += tokens::kThinkEnd;
      }
      if (m.content) out += *m.content;
      if (!m.tool_calls.empty()) {
        out += "\n\n<｜DSML｜tool_calls>\n";
        for (std::size_t k = 0; k < m.tool_calls.size(); ++k) {
          if (k) out += '\n';
          render_invoke(out, m.tool_calls[k], it.where + ".tool_calls[" + std::to_string(k) + "]");
        }
        out += "\n</｜DSML｜tool_calls>";
      }
      if (!it.wo_eos) out += tokens::kEos;
      break;
    }
    case Role::kTool:
      throw dsv4::Error("internal: tool message survived merging");  // unreachable
  }

  // Transition ("generation prompt"): only before an assistant / latest_reminder or at the end.
  if (index + 1 < c.items.size()) {
    Role next = c.items[index + 1].role;
    if (next != Role::kAssistant && next != Role::kLatestReminder) return;
  }
  if (it.task) {
    if (*it.task != Task::kAction) {
      out += task_token(*it.task);
    } else {
      out += tokens::kAssistant;
      out += thinking ? tokens::kThinkStart : tokens::kThinkEnd;
      out += task_token(Task::kAction);
    }
  } else if (it.role == Role::kUser || it.role == Role::kDeveloper) {
    out += tokens::kAssistant;
    if (thinking && (!c.drop_thinking || static_cast<long>(index) >= c.last_user))
      out += tokens::kThinkStart;
    else
      out += tokens::kThinkEnd;
  }
}

void check_size(const std::string& out, const PromptFormatConfig& config) {
  if (out.size() > config.max_prompt_bytes)
    throw dsv4::Error("prompt too long: more than " + std::to_string(config.max_prompt_bytes) +
                      " bytes");
}

std::string render_impl(const std::vector<Message>& context_in, const std::vector<Message>& messages_in,
                        const RenderOptions& opt, const PromptFormatConfig& config) {
  const std::string_view effort_text = effort_prefix(config.effort_profile, opt.reasoning_effort);

  std::vector<Item> context = merge_tool_messages(context_in, true);
  std::vector<Item> messages = merge_tool_messages(messages_in, false);

  // Sorting runs over context + messages so results in `messages` follow calls in `context`.
  std::vector<Item> full;
  full.reserve(context.size() + messages.size());
  full.insert(full.end(), context.begin(), context.end());
  full.insert(full.end(), messages.begin(), messages.end());
  sort_tool_results(full);

  std::string out;
  if (opt.add_default_bos_token && context.empty()) out += tokens::kBos;

  bool drop = opt.drop_thinking;
  if (std::any_of(full.begin(), full.end(), has_tools)) drop = false;

  long num_to_render, context_len;
  if (opt.thinking_mode == ThinkingMode::kThinking && drop) {
    full = drop_thinking_messages(full);
    // Same arithmetic as the reference, including its quirk of dropping the context alone.
    num_to_render = static_cast<long>(full.size()) - static_cast<long>(drop_thinking_messages(context).size());
    context_len = static_cast<long>(full.size()) - num_to_render;
  } else {
    num_to_render = static_cast<long>(messages.size());
    context_len = static_cast<long>(context.size());
  }

  RenderCtx ctx{full, opt.thinking_mode, drop, effort_text, find_last_user_index(full)};
  for (long k = 0; k < num_to_render; ++k) {
    render_message(out, static_cast<std::size_t>(k + context_len), ctx);
    check_size(out, config);
  }
  return out;
}

// ---------------------------------------------------------------- JSON input

using json_py::Json;

const Json* field(const Json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

std::string type_of(const Json& v) { return json_py::is_big_int(v) ? "number" : v.type_name(); }

[[noreturn]] void bad_field(const std::string& path, const std::string& what) {
  throw dsv4::Error(path + ": " + what);
}

// OpenAI content-part arrays. For tool outputs, the encoder's own rule (text parts joined by a
// blank line, other parts become "[Unsupported <type>]"); elsewhere the encoder expects a plain
// string, so text parts are joined the same way and anything else (images) is refused.
std::string flatten_parts(const Json& parts, const std::string& path, bool tool_output) {
  std::string out;
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const Json& p = parts[k];
    std::string pp = path + "[" + std::to_string(k) + "]";
    if (!p.is_object()) bad_field(pp, "content part must be an object");
    if (k) out += "\n\n";
    const Json* type = field(p, "type");
    if (type && !type->is_null() && !type->is_string()) bad_field(pp + ".type", "must be a string");
    if (type && type->is_string() && type->get_ref<const std::string&>() == "text") {
      const Json* text = field(p, "text");
      if (!text) continue;  // missing text reads as ""
      if (!text->is_string()) bad_field(pp + ".text", "must be a string");
      out += text->get_ref<const std::string&>();
    } else if (tool_output) {
      out += "[Unsupported ";
      out += (type && type->is_string()) ? type->get_ref<const std::string&>() : std::string("None");
      out += "]";
    } else {
      bad_field(pp, "unsupported content part type '" +
                        ((type && type->is_string()) ? type->get_ref<const std::string&>() : std::string("?")) +
                        "' (this model reads text only)");
    }
  }
  return out;
}

std::optional<std::string> optional_string(const Json& obj, const char* name, const std::string& path) {
  const Json* v = field(obj, name);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_string()) bad_field(path + "." + name, "must be a string, got " + type_of(*v));
  return v->get<std::string>();
}

ToolCall tool_call_from_json(const Json& tc, const std::string& path) {
  if (!tc.is_object()) bad_field(path, "tool call must be an object");
  const Json* fn = field(tc, "function");
  if (!fn || !fn->is_object()) bad_field(path + ".function", "must be an object");
  ToolCall out;
  // Ids come from `id`, falling back to `function.id` (as the reference's sort does).
  if (auto id = optional_string(tc, "id", path); id && !id->empty()) {
    out.id = *id;
  } else if (auto fid = optional_string(*fn, "id", path + ".function")) {
    out.id = *fid;
  }
  const Json* name = field(*fn, "name");
  if (!name || !name->is_string()) bad_field(path + ".function.name", "must be a string");
  out.name = name->get<std::string>();
  const Json* args = field(*fn, "arguments");
  if (!args) bad_field(path + ".function.arguments", "missing");
  if (args->is_string()) {
    out.arguments = args->get<std::string>();
  } else if (args->is_object()) {
    // Some clients send the object itself. The reference would wrap it as a single
    // "arguments" parameter; rendering the object's keys is what the model was trained on.
    out.arguments = json_py::dumps(*args);
  } else {
    bad_field(path + ".function.arguments", "must be a JSON string, got " + type_of(*args));
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------- public helpers

std::string_view role_name(Role r) {
  switch (r) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
    case Role::kTool: return "tool";
    case Role::kDeveloper: return "developer";
    case Role::kLatestReminder: return "latest_reminder";
  }
  return "?";
}

std::string_view task_token(Task t) {
  switch (t) {
    case Task::kAction: return "<｜action｜>";
    case Task::kQuery: return "<｜query｜>";
    case Task::kAuthority: return "<｜authority｜>";
    case Task::kDomain: return "<｜domain｜>";
    case Task::kTitle: return "<｜title｜>";
    case Task::kReadUrl: return "<｜read_url｜>";
  }
  return "";
}

std::optional<Task> parse_task(std::string_view s) {
  if (s == "action") return Task::kAction;
  if (s == "query") return Task::kQuery;
  if (s == "authority") return Task::kAuthority;
  if (s == "domain") return Task::kDomain;
  if (s == "title") return Task::kTitle;
  if (s == "read_url") return Task::kReadUrl;
  return std::nullopt;
}

ThinkingMode parse_thinking_mode(std::string_view s) {
  if (s == "chat") return ThinkingMode::kChat;
  if (s == "thinking") return ThinkingMode::kThinking;
  throw dsv4::Error("invalid thinking_mode '" + std::string(s) + "' (expected 'chat' or 'thinking')");
}

ReasoningEffort parse_reasoning_effort(std::string_view s) {
  if (s == "low") return ReasoningEffort::kLow;
  if (s == "high") return ReasoningEffort::kHigh;
  if (s == "max") return ReasoningEffort::kMax;
  throw dsv4::Error("invalid reasoning_effort '" + std::string(s) + "' (expected low, high or max)");
}

std::string_view effort_prefix(EffortProfile profile, ReasoningEffort effort) {
  if (profile == EffortProfile::kPreview) {
    switch (effort) {
      case ReasoningEffort::kDefault:
      case ReasoningEffort::kHigh: return "";
      case ReasoningEffort::kMax: return kEffortAbsoluteMax;
      case ReasoningEffort::kLow:
        throw dsv4::Error("reasoning_effort 'low' is not supported by this model (preview checkpoint: high or max)");
    }
  } else {
    switch (effort) {
      case ReasoningEffort::kDefault:
      case ReasoningEffort::kLow: return "";
      case ReasoningEffort::kHigh: return kEffortAbsoluteMax;
      case ReasoningEffort::kMax: return kEffortBeyondMax;
    }
  }
  return "";
}

bool prompt_opens_thinking(std::string_view prompt) {
  return prompt.size() >= tokens::kThinkStart.size() &&
         prompt.substr(prompt.size() - tokens::kThinkStart.size()) == tokens::kThinkStart;
}

void attach_tools(std::vector<Message>& context, std::vector<Message>& messages, const std::vector<Tool>& tools) {
  if (tools.empty()) return;
  for (auto* list : {&context, &messages}) {
    for (Message& m : *list) {
      if (m.role == Role::kSystem || m.role == Role::kDeveloper) {
        if (!m.tools.empty())
          throw dsv4::Error("tools given both at the top level and on a " + std::string(role_name(m.role)) + " message");
        m.tools = tools;
        return;
      }
    }
  }
  Message sys;
  sys.role = Role::kSystem;
  sys.content = "";
  sys.tools = tools;
  std::vector<Message>& target = context.empty() ? messages : context;
  target.insert(target.begin(), std::move(sys));
}

std::string render_prompt(const ChatRequest& request, const PromptFormatConfig& config) {
  if (request.tools.empty()) return render_impl(request.context, request.messages, request.options, config);
  std::vector<Message> context = request.context;
  std::vector<Message> messages = request.messages;
  attach_tools(context, messages, request.tools);
  return render_impl(context, messages, request.options, config);
}

Message message_from_json(const Json& msg, const std::string& path) {
  if (!msg.is_object()) bad_field(path, "message must be an object");
  Message m;
  const Json* role = field(msg, "role");
  if (!role || !role->is_string()) bad_field(path + ".role", "missing or not a string");
  const std::string& r = role->get_ref<const std::string&>();
  if (r == "system") m.role = Role::kSystem;
  else if (r == "user") m.role = Role::kUser;
  else if (r == "assistant") m.role = Role::kAssistant;
  else if (r == "tool") m.role = Role::kTool;
  else if (r == "developer") m.role = Role::kDeveloper;
  else if (r == "latest_reminder") m.role = Role::kLatestReminder;
  else bad_field(path + ".role", "unknown role '" + r + "'");

  const Json* content = field(msg, "content");
  if (!content) {
    // The reference reads a missing user/tool content as "".
    if (m.role == Role::kUser || m.role == Role::kTool) m.content = "";
  } else if (content->is_string()) {
    m.content = content->get<std::string>();
  } else if (content->is_array()) {
    m.content = flatten_parts(*content, path + ".content", m.role == Role::kTool);
  } else if (!content->is_null()) {
    bad_field(path + ".content", "must be a string, an array of content parts or null, got " + type_of(*content));
  }

  m.reasoning_content = optional_string(msg, "reasoning_content", path);

  if (const Json* tcs = field(msg, "tool_calls"); tcs && !tcs->is_null()) {
    if (!tcs->is_array()) bad_field(path + ".tool_calls", "must be an array");
    for (std::size_t k = 0; k < tcs->size(); ++k)
      m.tool_calls.push_back(tool_call_from_json((*tcs)[k], path + ".tool_calls[" + std::to_string(k) + "]"));
  }
  if (auto id = optional_string(msg, "tool_call_id", path)) m.tool_call_id = *id;

  if (const Json* tools = field(msg, "tools"); tools && !tools->is_null()) {
    if (!tools->is_array()) bad_field(path + ".tools", "must be an array of tools");
    for (std::size_t k = 0; k < tools->size(); ++k) {
      const Json& t = (*tools)[k];
      std::string tp = path + ".tools[" + std::to_string(k) + "]";
      if (!t.is_object()) bad_field(tp, "tool must be an object");
      const Json* fn = field(t, "function");
      if (!fn || !fn->is_object()) bad_field(tp + ".function", "must be a JSON object (the tool schema)");
      m.tools.push_back(Tool{*fn});
    }
  }
  if (const Json* rf = field(msg, "response_format")) m.response_format = *rf;

  if (const Json* task = field(msg, "task"); task && !task->is_null()) {
    if (!task->is_string()) bad_field(path + ".task", "must be a string");
    m.task = parse_task(task->get_ref<const std::string&>());
    if (!m.task)
      bad_field(path + ".task", "invalid task '" + task->get<std::string>() +
                                    "' (valid: action, query, authority, domain, title, read_url)");
  }
  if (const Json* w = field(msg, "wo_eos")) m.wo_eos = json_py::truthy(*w);
  return m;
}

std::vector<Message> messages_from_json(const Json& messages, std::string_view what) {
  if (!messages.is_array()) throw dsv4::Error(std::string(what) + ": must be an array of messages");
  std::vector<Message> out;
  out.reserve(messages.size());
  for (std::size_t i = 0; i < messages.size(); ++i)
    out.push_back(message_from_json(messages[i], std::string(what) + "[" + std::to_string(i) + "]"));
  return out;
}

RenderOptions render_options_from_json(const Json& o) {
  RenderOptions opt;
  if (o.is_null()) return opt;
  if (!o.is_object()) throw dsv4::Error("options: must be an object");
  if (const Json* v = field(o, "thinking_mode"); v && !v->is_null()) {
    if (!v->is_string()) throw dsv4::Error("options.thinking_mode: must be a string");
    opt.thinking_mode = parse_thinking_mode(v->get_ref<const std::string&>());
  }
  if (const Json* v = field(o, "drop_thinking"); v && !v->is_null()) opt.drop_thinking = json_py::truthy(*v);
  if (const Json* v = field(o, "add_default_bos_token"); v && !v->is_null())
    opt.add_default_bos_token = json_py::truthy(*v);
  if (const Json* v = field(o, "reasoning_effort"); v && !v->is_null()) {
    if (!v->is_string()) throw dsv4::Error("options.reasoning_effort: must be a string");
    opt.reasoning_effort = parse_reasoning_effort(v->get_ref<const std::string&>());
  }
  return opt;
}

std::string render_prompt_json(const Json& messages, const RenderOptions& options,
                               const PromptFormatConfig& config, const Json& context) {
  std::vector<Message> ctx;
  if (!context.is_null()) ctx = messages_from_json(context, "context");
  std::vector<Message> msgs = messages_from_json(messages, "messages");
  return render_impl(ctx, msgs, options, config);
}

}  // namespace dsv4::text
