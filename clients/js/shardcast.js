// shardcast JavaScript client (placeholder until the client lands).
export const VERSION = "0.0.0";
