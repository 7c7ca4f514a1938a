"""The math (pure functions), the policy, the experience buffer, episode bookkeeping and progress."""
