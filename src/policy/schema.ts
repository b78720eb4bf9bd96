/**
 * The policy file: who may reach which Exchange service from outside (INTERFACE.md, "Policy file").
 */
import { z } from 'zod';
import { SERVICES } from '../pipeline/services.js';

const principals = z.strictObject({
  /** Groups by sAMAccountName or DN; nested membership counts. */
  groups: z.array(z.string().min(1)).default([]),
  /** Users by `NETBIOS\sam`, `sam` or UPN. */
  users: z.array(z.string().min(1)).default([]),
});

const service = z
  .string()
  .transform((s) => s.toLowerCase())
  .pipe(z.enum(SERVICES, { error: `unknown service; one of ${SERVICES.join(', ')}` }));

const rule = z.strictObject({
  /** Shown in the access log's `rule` field and in `explain`. */
  id: z
    .string()
    .min(1)
    .regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, . _ - only'),
  services: z.array(service).min(1, 'needs at least one service'),
  allow: z
    .union([z.literal('authenticated'), principals], { error: 'expected `authenticated` or { groups, users }' })
    .optional(),
  deny: z.union([z.literal('all'), principals], { error: 'expected `all` or { groups, users }' }).optional(),
});

export const policySchema = z.strictObject({
  /** enforce (default) | report-only: log the would-be denial and let the request through. */
  mode: z.enum(['enforce', 'report-only']).default('enforce'),
  rules: z.array(rule).default([]),
});

export type PolicyFile = z.infer<typeof policySchema>;
export type RuleFile = z.infer<typeof rule>;
