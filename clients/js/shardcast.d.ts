// Types of the shardcast JavaScript client (placeholder until the client lands).
export declare const VERSION: string;
