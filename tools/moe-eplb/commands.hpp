// Subcommands of the moe-eplb tool. Each add_*_command registers its options
// and a callback on `app`; callbacks throw moe_eplb::Error on bad input, and
// main() turns that into one line on stderr and exit status 1.
#pragma once

#include <CLI/CLI.hpp>

namespace moe_eplb::cli {

void add_map_command(CLI::App& app);
void add_validate_command(CLI::App& app);
void add_record_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_simulate_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_demo_command(CLI::App& app);
void add_diff_command(CLI::App& app);
void add_replay_command(CLI::App& app);

}  // namespace moe_eplb::cli
