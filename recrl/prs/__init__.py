"""ProRL: proactive recommendation with a frozen user simulator (recrl.prs)."""
