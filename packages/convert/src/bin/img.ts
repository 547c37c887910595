#!/usr/bin/env node
import { processIo } from '../cli/common.js';
import { imgMain } from '../cli/img.js';

process.exitCode = await imgMain(process.argv.slice(2), processIo);
